"""Faults injected on purpose: a killed run, repeated runs, bad model output, broken rewards, bad settings."""

import fractions
import json
import math
import os
import signal
import subprocess
import sys
import time

import lightning as L
import pytest
import torch

from tests.helpers.paths import CONFIGS, GSM, TINY, child_env
from tests.helpers.problems import P42
from tests.helpers.scripted import ScriptedAgent, ScriptedProposerController, ScriptedReviewerController
from tests.helpers.training import unrun_checkpoint
from tracer_pl.cli import build_cli
from tracer_pl.core.dialogue import DialogueConfig, run_dialogues
from tracer_pl.core.gspo import GSPOConfig
from tracer_pl.core.problem import Problem
from tracer_pl.core.roles import Proposer, Reviewer
from tracer_pl.core.seats import Seat
from tracer_pl.data.datamodule import ReasoningDataModule
from tracer_pl.data.sources import load_problems
from tracer_pl.errors import ConfigError, DataError
from tracer_pl.training.module import BackboneConfig, TracerModule

ARGS = [f"--data.train={GSM}", "--model.proposer=tests.helpers.roles_for_tests.ByteSumProposer",
        "--model.gspo.lr=0.05", "--trainer.enable_progress_bar=false"]


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
    # one thread per process: the child and this one share the CPU; the repository root on its path for tests.helpers
    env = child_env({**os.environ, "OMP_NUM_THREADS": "1"})
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
    result = run_dialogues(
        [problem],
        agent,
        [Seat(Proposer(), ScriptedProposerController([])), Seat(Reviewer(), ScriptedReviewerController([1]))],
        config=DialogueConfig(rounds=2),
        training=True,
        learn={"proposer": lambda groups: None, "reviewer": lambda groups: None},
    )
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
@pytest.mark.usefixtures("run_dir")
def test_nonfinite_rewards_never_reach_regrets_or_weights():
    cli = build_cli(
        ["fit", "-c", TINY, *ARGS, "--trainer.limit_train_batches=2", f"--model.reviewer={__name__}.NaNReviewer"]
    )
    module = cli.model
    assert module.reviewer_controller.matcher.states() == []  # every reviewer value was NaN: no update
    proposer = module.proposer_controller.matcher  # its values are finite: its table grew, and stays finite
    assert proposer.states() and all(torch.isfinite(proposer.cumulative_regret(s)).all() for s in proposer.states())
    metrics = cli.trainer.callback_metrics
    assert metrics["gspo/reviewer/skipped_nonfinite"] > 0 and metrics["controller/skipped_nonfinite"] > 0
    reviewer_b = [p for n, p in module.policy.model.named_parameters() if "lora_B.reviewer" in n]
    assert all(float(p.abs().sum()) == 0 for p in reviewer_b)  # never stepped
    assert all(math.isfinite(float(p.abs().sum())) for p in module.policy.role_parameters("proposer"))


@pytest.mark.parametrize(
    "config, fields, flag",
    [
        (BackboneConfig, dict(top_p=0.0), "--model.backbone.top_p"),
        (BackboneConfig, dict(lora_dropout=1.0), "--model.backbone.lora_dropout"),
        (BackboneConfig, dict(temperature=-1.0), "--model.backbone.temperature"),
        (GSPOConfig, dict(min_reward_std=-0.1), "--model.gspo.min_reward_std"),
    ],
)
def test_more_impossible_settings(config, fields, flag):
    with pytest.raises(ConfigError, match=flag.replace(".", r"\.")):
        config(**fields)


def test_4bit_without_bitsandbytes_is_rejected_before_loading(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a)
    )
    message = (r'^--model\.backbone\.precision 4bit needs bitsandbytes, which is not installed: '
               r'pip install "tracer-pl\[qlora\]"')
    with pytest.raises(ConfigError, match=message):
        TracerModule(backbone=BackboneConfig(precision="4bit"))


@pytest.mark.subprocess
def test_the_4bit_config_without_bitsandbytes_ends_in_one_line_naming_the_extra(tmp_path):
    # bitsandbytes hidden from the import system: the 7B QLoRA config is refused before any model or hub access
    hide = ("import importlib.util, sys; real = importlib.util.find_spec; "
            "importlib.util.find_spec = lambda name, *a: None if name == 'bitsandbytes' else real(name, *a); "
            "sys.argv = ['tracer-pl', 'fit', '-c', sys.argv[1], '--trainer.accelerator=cpu', "
            "f'--trainer.default_root_dir={sys.argv[2]}']; from tracer_pl.cli import main; main()")
    run = subprocess.run([sys.executable, "-c", hide, str(CONFIGS / "gsm8k_qwen2.5-7b_qlora.yaml"), str(tmp_path)],
                         capture_output=True, text=True, env=child_env(os.environ), timeout=300)
    assert run.returncode == 2
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert lines[-1] == ('tracer-pl: error: --model.backbone.precision 4bit needs bitsandbytes, which is not '
                         'installed: pip install "tracer-pl[qlora]" (or use fp32/bf16)'), run.stderr[-2000:]


def test_unreadable_and_undecodable_files(tmp_path):
    with pytest.raises(DataError, match="not a readable file"):
        list(load_problems(str(tmp_path) + os.sep))
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"question": "caf\xe9", "answer": "#### 1"}\n')
    with pytest.raises(DataError, match="latin.jsonl line 1: not UTF-8 text"):
        list(load_problems(str(latin)))
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"rows": 3}))
    with pytest.raises(DataError, match="wrong.json: expected a JSON list of objects"):
        list(load_problems(str(wrong)))


# ---------------------------------------------------------------------- hostile checkpoints and runs
def sealed_checkpoint():
    from tracer_pl.training import checkpoints

    checkpoint = {
        "state_dict": {"w": torch.arange(64, dtype=torch.float32)},
        "epoch": 0,
        "tracer": {"torch_rng": torch.random.get_rng_state(), "step": torch.tensor(3)},
    }
    checkpoints.seal(checkpoint)
    return checkpoint


def flip_a_bit_in_the_weights(path):
    data = bytearray(path.read_bytes())
    at = bytes(data).index(torch.arange(64, dtype=torch.float32)[40:48].numpy().tobytes())
    data[at + 5] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: None, "no such file"),
        (lambda p: p.mkdir(), "is a directory; expected a .ckpt file"),
        (lambda p: p.write_bytes(b""), "empty file, not a checkpoint"),
        (lambda p: p.write_bytes(b"not a zip file at all"), "not a readable checkpoint"),
        (lambda p: (torch.save(sealed_checkpoint(), p), p.write_bytes(p.read_bytes()[:300])), "not a readable"),
        (lambda p: torch.save([1, 2], p), "not a Lightning checkpoint"),
        (
            lambda p: torch.save({"state_dict": {}, "x": fractions.Fraction(1, 2)}, p),
            "not a readable checkpoint \\(it holds objects other than",
        ),  # arbitrary objects: refused
        (
            lambda p: (torch.save(sealed_checkpoint(), p), flip_a_bit_in_the_weights(p)),
            "(damaged checkpoint|not a readable checkpoint)",
        ),
    ],
)
def test_unusable_checkpoint_files_give_one_line_errors(tmp_path, make, message):
    from tracer_pl.errors import CheckpointError
    from tracer_pl.training import checkpoints

    path = tmp_path / "last.ckpt"
    make(path)
    with pytest.raises(CheckpointError, match=f"--ckpt_path {path}: {message}") as error:
        checkpoints.read(path)
    assert "\n" not in str(error.value)


def test_checksum_refuses_any_changed_value_and_accepts_the_original(tmp_path):
    from tracer_pl.errors import CheckpointError
    from tracer_pl.training import checkpoints

    path = tmp_path / "ok.ckpt"
    torch.save(sealed_checkpoint(), path)
    assert torch.equal(checkpoints.read(path)["state_dict"]["w"], torch.arange(64, dtype=torch.float32))
    for change in (
        lambda c: c["state_dict"]["w"].__setitem__(40, 40.000004),  # one bit of a float
        lambda c: c["tracer"]["step"].add_(1),
        lambda c: c.__setitem__("epoch", 1),
        lambda c: c["state_dict"].__setitem__("extra", torch.zeros(1)),
    ):
        checkpoint = torch.load(path, weights_only=True)
        change(checkpoint)
        with pytest.raises(CheckpointError, match="damaged checkpoint"):
            checkpoints.verify(checkpoint, "x")


def test_a_failed_save_leaves_no_temporary_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import errno
    import tempfile

    from tracer_pl.errors import CheckpointError
    from tracer_pl.training.callbacks import write_atomically

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-tmp"))  # a broken $TMPDIR is never used
    path = tmp_path / "last.ckpt"
    write_atomically({"a": torch.ones(2)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(2))

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError, match="last.ckpt: cannot write the checkpoint \\(No space left on device\\)"):
        write_atomically({"a": torch.zeros(2)}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(2))


TINY_ARGS = ["fit", "-c", TINY, "--trainer.enable_progress_bar=false", "--trainer.logger=false"]


@pytest.mark.parametrize(
    "extra, error, message",
    [
        (["--trainer.limit_train_batches=0"], ConfigError, "--trainer.limit_train_batches is 0"),
        (["--trainer.max_epochs=0"], ConfigError, "--trainer.max_epochs is 0"),
        (["--trainer.default_root_dir=blocker/sub"], "CheckpointError", "cannot write checkpoints there"),
        (["--ckpt_path=missing.ckpt"], "CheckpointError", "--ckpt_path missing.ckpt: no such file"),
        (["--ckpt_path=."], "CheckpointError", "is a directory"),
        (["--model.gspo.weight_decay=-0.1"], ConfigError, "--model.gspo.weight_decay must be between 0.0 and 1.0"),
    ],
)
@pytest.mark.usefixtures("run_dir")
def test_unusable_runs_fail_before_any_compute(tmp_path, extra, error, message):
    from tracer_pl import errors

    (tmp_path / "blocker").write_text("a file where a directory should be")
    error = getattr(errors, error) if isinstance(error, str) else error
    with pytest.raises(error, match=message):
        build_cli([*TINY_ARGS, *extra])


@pytest.mark.usefixtures("run_dir")
def test_a_second_fit_into_a_locked_directory_is_refused(tmp_path):
    from tracer_pl.errors import CheckpointError
    from tracer_pl.training.callbacks import DirectoryLock

    lock = DirectoryLock(tmp_path / "runs/tiny/checkpoints", ".fit.lock")  # another run holds it
    try:
        with pytest.raises(CheckpointError, match=f"another fit \\(pid {os.getpid()} .*\\) is writing checkpoints"):
            build_cli([*TINY_ARGS, "--trainer.limit_train_batches=1"])
    finally:
        lock.release()
    DirectoryLock(tmp_path / "runs/tiny/checkpoints", ".fit.lock").release()  # free again once released


LOCK_WITHOUT_FCNTL = """
import sys
sys.modules["fcntl"] = None  # a platform without fcntl (Windows)
from pathlib import Path
from tracer_pl.errors import CheckpointError
from tracer_pl.training.callbacks import DirectoryLock
directory = Path(sys.argv[1])
first = DirectoryLock(directory, ".fit.lock")
try:
    DirectoryLock(directory, ".fit.lock")
    print("second lock taken")
except CheckpointError as error:
    print("refused:", error)
first.release()
DirectoryLock(directory, ".fit.lock").release()
print("free again")
"""


@pytest.mark.subprocess
def test_the_directory_lock_holds_where_there_is_no_fcntl(tmp_path):
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", LOCK_WITHOUT_FCNTL, str(tmp_path / "checkpoints")],
                          capture_output=True, text=True, env=child_env(os.environ), timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("refused: ") and "another fit (pid " in lines[0]  # the holder, named
    assert "is writing checkpoints here" in lines[0] and lines[-1] == "free again"


def test_batch_checkpoint_saves_through_the_public_trainer_api(tmp_path):
    from types import SimpleNamespace

    from lightning.pytorch.plugins.io import TorchCheckpointIO

    from tracer_pl.training.callbacks import AtomicCheckpointIO, BatchCheckpoint

    class CustomCheckpointIO(TorchCheckpointIO):
        """A writer of the user's own (remote storage, ...)."""

    saved = []
    for io, kept in ((TorchCheckpointIO(), AtomicCheckpointIO), (CustomCheckpointIO(), CustomCheckpointIO)):
        trainer = SimpleNamespace(is_global_zero=True, strategy=SimpleNamespace(checkpoint_io=io),
                                  save_checkpoint=lambda path, weights_only: saved.append((path, weights_only)))
        callback = BatchCheckpoint(str(tmp_path / "checkpoints"))
        callback.setup(trainer, None, "fit")
        try:
            assert type(trainer.strategy.checkpoint_io) is kept  # Lightning's default writer made atomic; yours kept
            assert callback.save(trainer, "last.ckpt") == tmp_path / "checkpoints" / "last.ckpt"
        finally:
            callback.teardown(trainer, None, "fit")
    assert saved == [(tmp_path / "checkpoints" / "last.ckpt", False)] * 2


def test_the_atomic_writer_never_stages_in_tmpdir_and_leaves_nothing_on_failure(tmp_path, monkeypatch):
    import errno
    import tempfile

    from tracer_pl.errors import CheckpointError
    from tracer_pl.training.callbacks import AtomicCheckpointIO

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-tmp"))  # Lightning's writer stages here
    path = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"a": torch.ones(2)}, str(path))
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(2))

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError, match="last.ckpt: cannot write the checkpoint"):
        AtomicCheckpointIO().save_checkpoint({"a": torch.zeros(2)}, str(path))
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


class SigtermDuringBatch3(L.Callback):
    """Sends this process SIGTERM in the middle of the third batch, as a scheduler preempting the job."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.fit_loop.epoch_loop.batch_progress.total.ready == 3:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.e2e
def test_sigterm_saves_at_the_batch_boundary_exits_143_and_resumes_exactly(
    tmp_path, monkeypatch, capsys, restore_signal_handlers
):
    # the fit installs a SIGTERM handler and this process receives the signal: the fixture puts the saved
    # handlers back afterwards (it runs for every test; named here because this test depends on it)
    from tracer_pl.cli import main

    run = [*TINY_ARGS[:4], "--trainer.limit_train_batches=4"]  # the tiny config's generated problems
    (tmp_path / "straight").mkdir()
    monkeypatch.chdir(tmp_path / "straight")
    build_cli(run)
    straight = final_state(tmp_path / "straight")

    (tmp_path / "preempted").mkdir()
    monkeypatch.chdir(tmp_path / "preempted")
    # planned for 8 batches, preempted during the third, resumed with 4: the batch limit is safe to change
    monkeypatch.setattr(
        sys,
        "argv",
        ["tracer-pl", *run, "--trainer.limit_train_batches=8", f"--trainer.callbacks+={__name__}.SigtermDuringBatch3"],
    )
    with pytest.raises(SystemExit) as stop:
        main()
    assert stop.value.code == 143
    err = capsys.readouterr().err
    assert "stopped by SIGTERM: saved runs/tiny/checkpoints/last.ckpt after batch 3" in err
    saved = final_state(tmp_path / "preempted")
    assert saved["ReasoningDataModule"]["consumed"] == 6  # batch 3 (of 2 problems) finished and was saved
    assert (tmp_path / "preempted/runs/tiny/logs/version_0/adapters/proposer").is_dir()

    build_cli([*run, "--ckpt_path=last"])  # the run's own last.ckpt, not a fresh start
    assert_same_training_state(straight, final_state(tmp_path / "preempted"))


def test_settings_documented_as_safe_are_accepted_on_resume():
    from tracer_pl.training import checkpoints

    saved = resume_checkpoint()
    changed = build_cli(
        [*TINY_ARGS[1:], "--model.evaluation.method=cot", "--model.eval_seed=7", "--model.dialogue.eval_greedy=false"],
        run=False,
    )
    checkpoints.check_model(saved, changed.model.hparams, resuming=True)  # no error
    data = ReasoningDataModule(
        train=changed.datamodule.train, batch_size=2, test="x.jsonl", test_limit=3, eval_batch_size=9, on_bad_row="skip"
    )
    checkpoints.check_data(saved["ReasoningDataModule"]["settings"], data.resume_settings())  # no error
    assert all(checkpoints.is_safe(flag) for flag in ("model.evaluation.method", "data.test_limit", "model.engine"))
    assert not any(checkpoints.is_safe(flag) for flag in ("model.gspo.group_size", "data.batch_size"))


@pytest.mark.parametrize(
    "change",
    [
        "--model.gspo.group_size=3",
        "--model.dialogue.rounds=3",
        "--model.controllers.state_time=false",
        "--data.batch_size=1",
        "--trainer.max_epochs=2",
        "--model.gspo.lr=0.5",
    ],
)
@pytest.mark.usefixtures("run_dir")
def test_resuming_a_changed_experiment_is_refused_before_loading(tmp_path, change):
    checkpoint = tmp_path / "runs/tiny/checkpoints/last.ckpt"
    checkpoint.parent.mkdir(parents=True)
    torch.save(resume_checkpoint(), checkpoint)
    flag = change.split("=")[0]
    with pytest.raises(ConfigError, match=f"^{flag.replace('.', '[.]')}: the checkpoint was (trained|saved) with"):
        build_cli([*TINY_ARGS, change, "--ckpt_path=last"])


def resume_checkpoint():
    """What a tiny-config fit saves, built without running one."""
    return unrun_checkpoint(TINY_ARGS[1:])


@pytest.mark.parametrize(
    "config, fields, message",
    [
        (GSPOConfig, dict(group_size=100_000), "--model.gspo.group_size must be between 2 and 256"),
        (BackboneConfig, dict(max_new_tokens=10**6), "--model.backbone.max_new_tokens must be between 1 and"),
        (DialogueConfig, dict(rounds=1000), "--model.dialogue.rounds must be a whole number between 1 and 99"),
    ],
)
def test_settings_beyond_sane_bounds_are_refused_before_loading(config, fields, message):
    with pytest.raises(ConfigError, match=message):
        config(**fields)


def test_a_prompt_longer_than_the_context_is_refused_before_generating():
    module = TracerModule(backbone=BackboneConfig(name="tiny-qwen2", max_new_tokens=200))
    module.configure_model()
    context = module.policy.model.config.max_position_embeddings  # 4096; the tokenizer is byte-level
    short = Problem(question="What is 6 times 7?", gold="42", dataset="gsm8k", uid="short")
    module.policy.check_prompts([short], module.roles)  # fits: no error
    long = Problem(question="x" * (context - 500), gold="1", dataset="gsm8k", uid="train.jsonl line 9")
    with pytest.raises(
        DataError,
        match=f"train.jsonl line 9: a turn of this problem can need (\\d+) tokens .* "
        f"more than the model's context of {context}; shorten",
    ):
        module.policy.check_prompts([short, long], module.roles)
    module.policy.max_new_tokens = 10  # the message's advice works: fewer new tokens fit
    module.policy.check_prompts([long], module.roles)
