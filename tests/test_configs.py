"""Every shipped config builds, and every overlay (ablations, single-agent baselines) does what it says."""

import csv
import json
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from tracer_pl import backbone as backbone_module
from tracer_pl.cli import build_cli
from tracer_pl.models import load_base_model
from tracer_pl.report import write_report
from tracer_pl.sources import BENCHMARKS, load_problems

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
TINY = str(CONFIGS / "tiny.yaml")
SHIPPED = sorted(p.relative_to(ROOT).as_posix() for p in CONFIGS.rglob("*.yaml"))
OVERLAYS = sorted(p.relative_to(CONFIGS).as_posix() for p in (CONFIGS / "ablations").glob("*.yaml")) + [
    "baselines/single_agent_gspo.yaml", "baselines/single_agent_grpo.yaml"]


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def documented_stack(config):
    """The config files the command on ``config``'s first line stacks, e.g. a base config then an overlay."""
    words = (ROOT / config).read_text().splitlines()[0].removeprefix("#").split()
    assert words[:2] in (["tracer-pl", "fit"], ["tracer-pl", "test"]), f"{config}: line 1 must be its command"
    return [words[i + 1] for i, word in enumerate(words[:-1]) if word == "-c"]


def tiny_stand_in(calls):
    """``load_base_model`` that records what the config asked for and loads the tiny model of that family."""

    def load(name_or_path, *, precision="fp32", compute_dtype="bf16", device=None):
        calls.append((name_or_path, precision, compute_dtype))
        tiny = "tiny-qwen2" if "qwen" in name_or_path.lower() else "tiny-llama"
        return load_base_model(tiny, precision=precision, compute_dtype=compute_dtype, device="cpu")

    return load


def test_the_configs_found_here_include_every_kind():
    assert {c.split("/")[1] for c in SHIPPED if c.count("/") == 2} == {"ablations", "baselines", "loggers"}
    assert "configs/loggers/wandb.yaml" in SHIPPED and len(SHIPPED) >= 20


@pytest.mark.parametrize("config", SHIPPED)
def test_every_shipped_config_builds_module_data_and_trainer(config, monkeypatch):
    stack = documented_stack(config)
    assert stack[-1] == config, f"{config}: its command must end with -c {config}"
    merged: dict = {}
    for path in stack:
        for section, values in (yaml.safe_load((ROOT / path).read_text()) or {}).items():
            merged.setdefault(section, {}).update(values if isinstance(values, dict) else {})
    gpu = merged.get("trainer", {}).get("accelerator") == "gpu"
    with monkeypatch.context() as patch:
        if gpu:  # a GPU config builds its trainer here as on a one-GPU machine
            patch.setattr(torch.cuda, "device_count", lambda: 1)
        cli = build_cli([arg for path in stack for arg in ("-c", str(ROOT / path))], run=False)
    assert isinstance(cli.trainer, L.Trainer) and type(cli.trainer.accelerator).__name__ == (
        "CUDAAccelerator" if gpu else "CPUAccelerator")

    calls: list = []
    monkeypatch.setattr(backbone_module, "load_base_model", tiny_stand_in(calls))
    module = cli.model
    module.configure_model()
    wanted = module.backbone_config
    assert calls == [(wanted.name, wanted.precision, wanted.compute_dtype)]
    assert module.backbone.roles == [module.proposer.name, module.reviewer.name]
    if wanted.precision == "4bit":  # the QLoRA config quantizes the base and trains the adapters
        assert getattr(module.backbone.model, "is_loaded_in_4bit", False)
        assert module.backbone.role_parameters(module.proposer.name)
    assert len(module.configure_optimizers()) == len(module.trained_roles)

    data = cli.datamodule
    for source in [data.train, *data.test, *data.val]:
        if source is None or source in BENCHMARKS:  # a hub benchmark: known by name, not downloaded here
            continue
        assert next(iter(load_problems(source, split="test"))).question


def lora_b_sum(module, role):
    return sum(float(p.abs().sum()) for n, p in module.backbone.model.named_parameters()
               if "lora_B" in n and f".{role}." in n)


def states(controller):
    return controller.matcher.states()


def test_every_overlay_is_covered_here():
    assert set(OVERLAYS) - {"baselines/single_agent_gspo.yaml", "baselines/single_agent_grpo.yaml"} == set(CHECKS)


def check_single_agent(module, rows, level):
    assert module.algorithm == "single_agent" and module.gspo_config.importance_level == level
    assert module.trained_roles == ["proposer"]
    assert lora_b_sum(module, "reviewer") == 0  # the reviewer never trained
    assert not states(module.proposer_controller) and not states(module.reviewer_controller)
    assert {float(r["train/calls_per_problem"]) for r in rows} == {4.0}  # G = 4 samples, one call per problem


CHECKS = {
    "ablations/no_reviewer.yaml": lambda m, rows: (
        m.trained_roles == ["proposer"] and not states(m.reviewer_controller)
        and all(float(r["controller/reviewer/p_speak"] or 0) == 0 for r in rows)),
    "ablations/no_proposer_controller.yaml": lambda m, rows: (
        not states(m.proposer_controller) and bool(states(m.reviewer_controller))),
    "ablations/always_speak_refresh.yaml": lambda m, rows: (
        not states(m.proposer_controller) and not states(m.reviewer_controller)
        and {float(r["controller/reviewer/p_speak"]) for r in rows} == {1.0}),
    "ablations/always_keep_skip.yaml": lambda m, rows: (
        not states(m.proposer_controller) and not states(m.reviewer_controller)
        and {float(r["train/calls_per_problem"]) for r in rows} == {5.0}),  # 4 candidates + 1 utterance
    "ablations/no_counterfactual.yaml": lambda m, rows: (
        not m.dialogue_config.counterfactual and bool(states(m.proposer_controller))),
    "ablations/frozen_controllers.yaml": lambda m, rows: (
        not states(m.proposer_controller) and not states(m.reviewer_controller)),
    "ablations/no_vote_state.yaml": lambda m, rows: bool(states(m.proposer_controller)) and all(
        s in {("last",), ("not_last",)} for c in m.controllers for s in states(c)),
    "ablations/no_time_state.yaml": lambda m, rows: all(
        len(s) == 1 and s[0] not in {"last", "not_last"} for c in m.controllers for s in states(c)),
    "ablations/no_proposer_gspo.yaml": lambda m, rows: (
        m.trained_roles == ["reviewer"] and lora_b_sum(m, "proposer") == 0),
    "ablations/no_reviewer_gspo.yaml": lambda m, rows: (
        m.trained_roles == ["proposer"] and lora_b_sum(m, "reviewer") == 0),
}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_trains_and_tests(overlay, tmp_path):
    cli = build_cli(["fit", "-c", TINY, "-c", str(CONFIGS / overlay), "--trainer.limit_train_batches=2"])
    rows = list(csv.DictReader((tmp_path / "runs/tiny/logs/version_0/metrics.csv").open()))
    rows = [r for r in rows if r.get("train/calls_per_problem")]
    assert len(rows) == 2
    if overlay.startswith("baselines/"):
        check_single_agent(cli.model, rows, "token" if "grpo" in overlay else "sequence")
    else:
        assert CHECKS[overlay](cli.model, rows)
    build_cli(["test", "-c", TINY, "-c", str(CONFIGS / overlay), "--data.test_limit=2",
               "--ckpt_path=runs/tiny/checkpoints/last.ckpt"])
    metrics = json.loads(next((tmp_path / "runs/tiny/logs").glob("version_1/test_metrics.json")).read_text())
    assert 0 <= metrics[next(k for k in metrics if k.endswith("/accuracy"))] <= 1


def test_both_protocols_and_speak_rates_per_state_in_one_test_run(tmp_path):
    build_cli(["fit", "-c", TINY, "--trainer.limit_train_batches=2"])
    rows = list(csv.DictReader((tmp_path / "runs/tiny/logs/version_0/metrics.csv").open()))
    monitor = [k for k in rows[0] if k.startswith("controller/proposer/") and k.endswith("/avg_regret")]
    assert len(monitor) > 1  # per state, from ControllerMonitor
    assert any((tmp_path / "runs/tiny/tensorboard").rglob("events.out.tfevents*"))
    build_cli(["test", "-c", TINY, "--data.test_limit=4", "--ckpt_path=runs/tiny/checkpoints/last.ckpt"])
    directory = tmp_path / "runs/tiny/logs/version_1"
    metrics = json.loads((directory / "test_metrics.json").read_text())
    name = "basic_arithmetic"
    assert {f"test/{name}/accuracy", f"test/{name}@argmax/accuracy"} <= set(metrics)
    for protocol_name in (name, f"{name}@argmax"):
        records = [json.loads(line) for line in (directory / f"test_records_{protocol_name}.jsonl").open()]
        assert len(records) == 4
        # the logged per-state rates equal the rates counted from the records themselves
        counts: dict[str, list[float]] = {}
        for record in records:
            for turn in record["turns"]:
                if turn["forced"] or turn["state"] is None:
                    continue
                controller, speaking = ("proposer", "refresh") if turn["round"] % 2 else ("reviewer", "speak")
                key = f"test/{protocol_name}/{controller}/p_{speaking}/{'/'.join(turn['state'])}"
                counts.setdefault(key, []).append(float(turn["action"] == speaking))
        assert counts
        for key, values in counts.items():
            assert metrics[key] == pytest.approx(sum(values) / len(values))
    # argmax plays deterministic actions per state: a state's rate is 0 or 1 there
    argmax_rates = [v for k, v in metrics.items() if k.startswith(f"test/{name}@argmax/") and "/p_" in k]
    assert argmax_rates and all(v in (0.0, 1.0) for v in argmax_rates)
    # the report reads this real run: both protocols as rows, and the training plots from ControllerMonitor
    report = write_report([tmp_path / "runs/tiny"], tmp_path / "report").read_text()
    accuracy = metrics[f"test/{name}/accuracy"]
    assert f"| tiny | {name} | 4 | {accuracy:.3f}" in report and f"| tiny (argmax) | {name} | 4 |" in report
    assert (tmp_path / "report/tiny_regret.png").exists() and (tmp_path / "report/tiny_speak_rates.png").exists()
