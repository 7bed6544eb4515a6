"""Every shipped config builds, and every overlay (ablations, single-agent baselines) does what it says."""

import csv
import importlib.util
import json

import lightning as L
import pytest
import torch
import yaml

from tests.helpers.paths import CONFIGS, ROOT, TINY
from tests.helpers.record_checks import TrainingRecords, assert_metrics_match_records
from tracer_pl.cli import build_cli
from tracer_pl.data.sources import BENCHMARKS, load_problems
from tracer_pl.engines.hf import policy as policy_module
from tracer_pl.engines.hf.models import bnb_config, load_base_model
from tracer_pl.reporting.report import write_report

SHIPPED = sorted(p.relative_to(ROOT).as_posix() for p in CONFIGS.rglob("*.yaml"))
OVERLAYS = sorted(p.relative_to(CONFIGS).as_posix() for p in (CONFIGS / "ablations").glob("*.yaml")) + [
    "baselines/single_agent_gspo.yaml", "baselines/single_agent_grpo.yaml"]  # the overlays that train

pytestmark = pytest.mark.usefixtures("run_dir")  # the configs write under runs/<name>: in tmp_path


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
    kinds = {c.split("/")[1] for c in SHIPPED if c.count("/") == 2}
    assert kinds == {"ablations", "baselines", "engines", "examples", "loggers", "protocols"}
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

    module = cli.model
    if type(module.engine).__name__ == "VLLMEngine" and importlib.util.find_spec("vllm") is None:
        # without vLLM (this venv) the overlay builds up to its engine; make test-vllm builds and runs the model
        assert module.engine.max_model_len == merged["model"]["engine"]["init_args"]["max_model_len"]
        return
    calls: list = []
    monkeypatch.setattr(policy_module, "load_base_model", tiny_stand_in(calls))
    module.configure_model()
    wanted = module.backbone_config
    assert calls == [(wanted.name, wanted.precision, wanted.compute_dtype)]
    assert module.policy.roles == [role.name for role in module.roles]
    if wanted.precision == "4bit":  # the QLoRA config quantizes the base and trains the adapters
        assert getattr(module.policy.model, "is_loaded_in_4bit", False)
        on_gpu = bnb_config(wanted.compute_dtype, torch.device("cuda"))  # what a GPU would get
        assert on_gpu.bnb_4bit_quant_type == "nf4" and on_gpu.bnb_4bit_use_double_quant
        assert on_gpu.bnb_4bit_compute_dtype == torch.bfloat16
        assert module.policy.role_parameters(module.proposer.name)
    assert len(module.configure_optimizers()) == len(module.trained_roles)

    data = cli.datamodule
    for source in [data.train, *data.test, *data.val]:
        if source is None or source in BENCHMARKS:  # a hub benchmark: known by name, not downloaded here
            continue
        assert next(iter(load_problems(source, split="test"))).question


def lora_b_sum(module, role):
    return sum(float(p.abs().sum()) for n, p in module.policy.model.named_parameters()
               if "lora_B" in n and f".{role}." in n)


def states(controller):
    return controller.matcher.states()


def test_every_overlay_is_covered_here():
    assert set(OVERLAYS) == set(CHECKS)


def actions(turns, role, free_only=True):
    return {t.action for t in turns if t.role == role and not (free_only and t.forced)}


def free_states(turns):
    return [tuple(t.state) for t in turns if not t.forced and t.state is not None]


def valued(turns, role):
    return [t.values for t in turns if t.role == role and t.values is not None]


def single_agent(level):
    return lambda m, rows, turns: {
        "single-agent algorithm": m.algorithm == "single_agent",
        f"{level}-level ratios": m.gspo_config.importance_level == level,
        "only the proposer trains": m.trained_roles == ["proposer"] and lora_b_sum(m, "reviewer") == 0,
        "the proposer trains": lora_b_sum(m, "proposer") > 0,
        "no controller learns": not states(m.proposer_controller) and not states(m.reviewer_controller),
        "one call of G = 4 samples per problem": {float(r["train/calls_per_problem"]) for r in rows} == {4.0},
    }


# What each overlay must change, from the turns of every training dialogue and the trained module. Each check
# is also run on a plain TRACER run (test_no_check_passes_on_plain_tracer), where it must fail.
CHECKS = {
    "ablations/no_reviewer.yaml": lambda m, rows, turns: {
        "reviewer untrained": m.trained_roles == ["proposer"] and lora_b_sum(m, "reviewer") == 0,
        "reviewer always skips": actions(turns, "reviewer") == {"skip"},
        "reviewer never generates, not even a counterfactual": all(
            t.calls == 0 for t in turns if t.role == "reviewer"),
        "proposer controller still learns": bool(states(m.proposer_controller)),
    },
    "ablations/no_proposer_controller.yaml": lambda m, rows, turns: {
        "proposer always refreshes": actions(turns, "proposer") == {"refresh"},
        "proposer controller never learns": not states(m.proposer_controller),
        "reviewer controller learns": bool(states(m.reviewer_controller)),
    },
    "ablations/always_speak_refresh.yaml": lambda m, rows, turns: {
        "proposer always refreshes": actions(turns, "proposer") == {"refresh"},
        "reviewer always speaks": actions(turns, "reviewer") == {"speak"},
        "no controller learns": not states(m.proposer_controller) and not states(m.reviewer_controller),
    },
    "ablations/always_keep_skip.yaml": lambda m, rows, turns: {
        "proposer always keeps": actions(turns, "proposer") == {"keep"},
        "reviewer always skips": actions(turns, "reviewer") == {"skip"},
        "no controller learns": not states(m.proposer_controller) and not states(m.reviewer_controller),
        "only round 1 proposes": all(t.round == 1 for t in turns if t.role == "proposer" and t.action == "refresh"),
        "the reviewer never generates": all(t.calls == 0 for t in turns if t.role == "reviewer"),
    },
    "ablations/no_counterfactual.yaml": lambda m, rows, turns: {
        "no counterfactual sample": all(t.counterfactual_text is None for t in turns),
        "decisions are still valued": bool(valued(turns, "proposer")),
        "the unchosen action is valued 0": all(0.0 in v.values() for v in valued(turns, "proposer")),
        "proposer controller learns": bool(states(m.proposer_controller)),
    },
    "ablations/frozen_controllers.yaml": lambda m, rows, turns: {
        "no controller learns": not states(m.proposer_controller) and not states(m.reviewer_controller),
        "free decisions exist": bool(free_states(turns)),
        "every free decision is drawn from the uniform strategy": all(
            t.probabilities == [0.5, 0.5] for t in turns if not t.forced),
    },
    "ablations/no_vote_state.yaml": lambda m, rows, turns: {
        "controllers learn": bool(states(m.proposer_controller)) and bool(states(m.reviewer_controller)),
        "states are the time bucket only": bool(free_states(turns)) and set(free_states(turns)) <= {
            ("last",), ("not_last",)},
    },
    "ablations/no_time_state.yaml": lambda m, rows, turns: {
        "controllers learn": bool(states(m.proposer_controller)) and bool(states(m.reviewer_controller)),
        "states are the vote bucket only": bool(free_states(turns)) and all(
            len(s) == 1 and s[0] not in {"last", "not_last"} for s in free_states(turns)),
    },
    "ablations/no_proposer_gspo.yaml": lambda m, rows, turns: {
        "only the reviewer trains": m.trained_roles == ["reviewer"] and lora_b_sum(m, "proposer") == 0,
        "the reviewer trains": lora_b_sum(m, "reviewer") > 0,
    },
    "ablations/no_reviewer_gspo.yaml": lambda m, rows, turns: {
        "only the proposer trains": m.trained_roles == ["proposer"] and lora_b_sum(m, "reviewer") == 0,
        "the proposer trains": lora_b_sum(m, "proposer") > 0,
    },
    "baselines/single_agent_gspo.yaml": single_agent("sequence"),
    "baselines/single_agent_grpo.yaml": single_agent("token"),
}

# Roles whose rewards vary on the tiny model's text, so that every GSPO step that can happen does happen; and the
# proposer controller decides after every pending answer, readable or not (the tiny model's text rarely is), so
# every controller check has decisions to look at.
WITH_SIGNAL = ["--model.proposer=tests.helpers.roles_for_tests.ByteSumProposer",
               "--model.reviewer=tests.helpers.roles_for_tests.ByteSumReviewer",
               "--model.dialogue.invalid_pending=decide",
               "--trainer.callbacks+=tests.helpers.record_checks.TrainingRecords", "--trainer.limit_train_batches=2"]


def train_and_check(overlays, tmp_path):
    """Fit the tiny config with ``overlays``; the named results of every check on that run."""
    cli = build_cli(["fit", "-c", TINY, *[a for o in overlays for a in ("-c", str(CONFIGS / o))], *WITH_SIGNAL])
    rows = [r for r in csv.DictReader((tmp_path / "runs/tiny/logs/version_0/metrics.csv").open())
            if r.get("train/calls_per_problem")]
    assert len(rows) == 2
    (collector,) = [c for c in cli.trainer.callbacks if isinstance(c, TrainingRecords)]
    turns = [t for record in collector.records for t in record.turns]
    assert len(collector.records) == 4  # 2 batches of 2
    return {name: check(cli.model, rows, turns) for name, check in CHECKS.items()}


@pytest.mark.e2e
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_trains_and_tests(overlay, tmp_path):
    results = train_and_check([overlay], tmp_path)[overlay]
    assert [name for name, passed in results.items() if not passed] == []
    build_cli(["test", "-c", TINY, "-c", str(CONFIGS / overlay), "--data.test_limit=2",
               "--ckpt_path=runs/tiny/checkpoints/last.ckpt"])
    directory = tmp_path / "runs/tiny/logs/version_1"
    metrics = json.loads((directory / "test_metrics.json").read_text())
    assert_metrics_match_records(metrics, "test/basic_arithmetic", directory / "test_records_basic_arithmetic.jsonl")


@pytest.mark.e2e
def test_no_check_passes_on_plain_tracer(tmp_path):
    """Every overlay's check fails on a run without the overlay, so each one tests what its overlay does."""
    results = train_and_check([], tmp_path)
    assert [overlay for overlay, named in results.items() if all(named.values())] == []


@pytest.mark.e2e
def test_both_protocols_and_speak_rates_per_state_in_one_test_run(tmp_path):
    # the problems of a seeded shuffle visit more than one proposer state in two batches
    build_cli(["fit", "-c", TINY, "--trainer.limit_train_batches=2", "--data.shuffle=true"])
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


@pytest.mark.parametrize("base", ["configs/tiny.yaml", "configs/quickstart.yaml",
                                  "configs/gsm8k_qwen2.5-7b_qlora.yaml", "configs/gsm8k_qwen2.5-7b_bf16.yaml"])
def test_the_released_protocol_stacks_on_every_base_config(base, monkeypatch):
    """Every decision of configs/protocols/released.yaml reaches the module and the data, whatever the base."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # the 7B configs build their trainer as on a GPU
    cli = build_cli(["-c", str(ROOT / base), "-c", str(ROOT / "configs/protocols/released.yaml")], run=False)
    module, data = cli.model, cli.datamodule
    dialogue = module.dialogue_config
    assert (dialogue.keep_valuation, dialogue.unreadable_refresh, dialogue.order, dialogue.eval_greedy) == (
        "as_keep", "replaces_pending", "one_at_a_time", False)
    assert module.controller_config.vote_clip is None and module.gspo_config.include_eos is False
    assert list(module.evaluation.protocols) == ["argmax"] and data.shuffle is False
    for role in (module.proposer, module.reviewer):
        assert (role.prompt_style, role.history_turns) == ("plain", 4)
    base_only = build_cli(["-c", str(ROOT / base)], run=False).model
    assert base_only.backbone_config == module.backbone_config  # the preset leaves the model and its sampling
    assert base_only.proposer.prompt_style == "chat" and base_only.dialogue_config.keep_valuation == "counterfactual"
