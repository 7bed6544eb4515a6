"""Faults injected on purpose: a killed run, repeated runs, bad model output, broken rewards, bad settings."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from scripted import ScriptedAgent, ScriptedProposerController, ScriptedReviewerController
from tracer_pl.cli import build_cli
from tracer_pl.dialogue import DialogueConfig, run_dialogues
from tracer_pl.errors import ConfigError, DataError
from tracer_pl.module import BackboneConfig, TracerModule
from tracer_pl.problem import Problem
from tracer_pl.roles import Proposer, Reviewer
from tracer_pl.sources import load_problems

TESTS = Path(__file__).resolve().parent
TINY = str(TESTS.parent / "configs" / "tiny.yaml")
GSM = TESTS / "data" / "gsm8k" / "test_sample64.jsonl"
ARGS = [f"--data.train={GSM}", "--model.proposer=roles_for_tests.ByteSumProposer", "--model.gspo.lr=0.05",
        "--trainer.enable_progress_bar=false"]


def final_state(root):
    return torch.load(root / "runs/tiny/checkpoints/last.ckpt", weights_only=True)


def assert_same_training_state(a, b):
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    for name, controller in a["tracer"]["controllers"].items():  # regret tables, strategy sums, visits, RNG
        assert controller["matcher"] == b["tracer"]["controllers"][name]["matcher"]
        assert torch.equal(controller["generator"], b["tracer"]["controllers"][name]["generator"])
    for oa, ob in zip(a["optimizer_states"], b["optimizer_states"], strict=True):
        for sa, sb in zip(oa["state"].values(), ob["state"].values(), strict=True):
            assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    assert a["ReasoningDataModule"] == b["ReasoningDataModule"]  # data position


@pytest.mark.e2e
@pytest.mark.subprocess
@pytest.mark.timeout(900)
def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    batches = ["--trainer.limit_train_batches=24"]
    (tmp_path / "straight").mkdir()
    monkeypatch.chdir(tmp_path / "straight")
    build_cli(["fit", "-c", TINY, *ARGS, *batches])
    straight = final_state(tmp_path / "straight")

    run = tmp_path / "killed"
    run.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1",  # one thread per process: the child and this one share the CPU
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, "-m", "tracer_pl.cli", "fit", "-c", TINY, *ARGS, *batches],
                               cwd=run, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = run / "runs/tiny/checkpoints/last.ckpt"
    deadline = time.monotonic() + 240
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    position = torch.load(checkpoint, weights_only=True)["ReasoningDataModule"]["consumed"]  # a whole file
    assert 0 < position < 48

    monkeypatch.chdir(run)
    build_cli(["fit", "-c", TINY, *ARGS, *batches, f"--ckpt_path={checkpoint}"])
    assert_same_training_state(straight, final_state(run))


@pytest.mark.e2e
def test_same_seed_same_dialogues_and_metrics(tmp_path, monkeypatch):
    results = []
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        build_cli(["fit", "-c", TINY, *ARGS, "--trainer.limit_train_batches=3"])
        build_cli(["test", "-c", TINY, f"--data.test={GSM}", "--data.test_limit=4",
                   "--ckpt_path=runs/tiny/checkpoints/last.ckpt"])
        logs = tmp_path / name / "runs/tiny/logs"
        results.append(((logs / "version_0/metrics.csv").read_text(),
                        (logs / "version_1/test_metrics.json").read_text(), final_state(tmp_path / name)))
    assert results[0][0] == results[1][0]  # every training metric of every step
    assert results[0][1] == results[1][1]
    assert_same_training_state(results[0][2], results[1][2])


P42 = Problem(question="What is 6 times 7?", gold="42", dataset="gsm8k")
PMATH = Problem(question="Simplify 2/4.", gold="\\frac{1}{2}", dataset="math500")


@pytest.mark.parametrize(
    "problem, proposal",
    [
        (P42, ""),  # an empty completion: no answer
        (P42, "6 times 7 is the product of six sev"),  # cut at the token limit, no final line
        (P42, "Final answer: \ufffd\ufffd4\ufffd"),  # undecodable bytes replaced
        (P42, "Final answer: " + "9" * 3000),  # an absurdly large number
        (P42, "Final answer: 1e999999"),
        (PMATH, "Final answer: \\boxed{\\frac{1}{"),  # unbalanced LaTeX
        (PMATH, "\\boxed{\\sqrt[}{x}}"),  # LaTeX math-verify cannot parse
    ],
)
def test_bad_model_output_is_no_answer_never_an_exception(problem, proposal):
    agent = ScriptedAgent(proposer=[proposal] * 5, reviewer=["", "RIGHT", "\ufffd", "WRONG", "RIGHT\nok"])
    result = run_dialogues([problem], agent, proposer=Proposer(), reviewer=Reviewer(),
                           proposer_controller=ScriptedProposerController([]),
                           reviewer_controller=ScriptedReviewerController([1]), config=DialogueConfig(rounds=2),
                           training=True, learn={"proposer": lambda groups: None, "reviewer": lambda groups: None})
    record = result.records[0]
    assert not record.correct  # whatever was read from it, it is not the gold answer
    proposer_group, reviewer_group = result.groups
    assert proposer_group.rewards.tolist() == [-1.0] * 4  # wrong or unparseable proposals score -1
    if record.pending_answer is None:  # nothing parseable is pending: every review scores 0
        assert reviewer_group.rewards.tolist() == [0.0] * 4
    else:  # a wrong answer is pending: no verdict 0, RIGHT -1, unreadable 0, WRONG +1
        assert reviewer_group.rewards.tolist() == [0.0, -1.0, 0.0, 1.0]


class NaNReviewer(Reviewer):
    def reward(self, text, view):
        return float("nan")


@pytest.mark.e2e
def test_nonfinite_rewards_never_reach_regrets_or_weights(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = build_cli(["fit", "-c", TINY, *ARGS, "--trainer.limit_train_batches=2",
                     "--model.reviewer=test_reliability.NaNReviewer"])
    module = cli.model
    assert module.reviewer_controller.matcher.states() == []  # every reviewer value was NaN: no update
    proposer = module.proposer_controller.matcher  # its values are finite: its table grew, and stays finite
    assert proposer.states() and all(torch.isfinite(proposer.cumulative_regret(s)).all() for s in proposer.states())
    metrics = cli.trainer.callback_metrics
    assert metrics["gspo/reviewer/skipped_nonfinite"] > 0 and metrics["controller/skipped_nonfinite"] > 0
    reviewer_b = [p for n, p in module.backbone.model.named_parameters() if "lora_B.reviewer" in n]
    assert all(float(p.abs().sum()) == 0 for p in reviewer_b)  # never stepped
    assert all(math.isfinite(float(p.abs().sum())) for p in module.backbone.role_parameters("proposer"))


@pytest.mark.parametrize(
    "settings, flag",
    [
        (dict(backbone=BackboneConfig(top_p=0.0)), "--model.backbone.top_p"),
        (dict(backbone=BackboneConfig(lora_dropout=1.0)), "--model.backbone.lora_dropout"),
        (dict(backbone=BackboneConfig(temperature=-1.0)), "--model.backbone.temperature"),
        (dict(dialogue=DialogueConfig(min_reward_std=-0.1)), "--model.dialogue.min_reward_std"),
    ],
)
def test_more_impossible_settings(settings, flag):
    with pytest.raises(ConfigError, match=flag.replace(".", r"\.")):
        TracerModule(**settings)


def test_4bit_without_bitsandbytes_is_rejected_before_loading(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(ConfigError, match="--model.backbone.precision 4bit needs the bitsandbytes package"):
        TracerModule(backbone=BackboneConfig(precision="4bit"))


def test_unreadable_and_undecodable_files(tmp_path):
    with pytest.raises(DataError, match="not a readable file"):
        list(load_problems(str(tmp_path) + os.sep))
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"question": "caf\xe9", "answer": "#### 1"}\n')
    with pytest.raises(DataError, match="latin.jsonl: not UTF-8 text"):
        list(load_problems(str(latin)))
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"rows": 3}))
    with pytest.raises(DataError, match="wrong.json: expected a JSON list of objects"):
        list(load_problems(str(wrong)))
