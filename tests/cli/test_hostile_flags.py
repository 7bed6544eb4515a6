"""Hostile settings, trainer flags and overlays on the tiny config: each a one-line error before the model loads.

Settings with which nothing can learn, trainer options that manual optimization or this module cannot honour,
overlays that cannot start (vLLM not installed, W&B without a key), config files that are empty or repeat a key,
a checkpoint of the other regret-matching variant, and evaluation sets whose names collide.
"""

import importlib.util
import json

import pytest

from tests.helpers.paths import CONFIGS, TINY

pytestmark = pytest.mark.usefixtures("run_dir")  # the tiny config writes under runs/tiny: in tmp_path

FAKE = "--model.engine=tracer_pl.engines.fake.FakeEngine"


def one_line_error(monkeypatch, capsys, argv):
    """Run ``tracer-pl argv`` in-process with model loading forbidden; return its one error line."""
    from tracer_pl.cli import main
    from tracer_pl.training.module import TracerModule

    def load(self):
        raise AssertionError("the model was loaded before the setting was refused")

    monkeypatch.setattr(TracerModule, "configure_model", load)
    monkeypatch.setattr("sys.argv", ["tracer-pl", *argv])
    with pytest.raises(SystemExit) as stop:
        main()
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("tracer-pl: error: ")]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


NOTHING_LEARNS = [  # (arguments, the start of what the error says)
    (["--model.backbone.temperature", "0"], "--model.backbone.temperature must be in (0, 10]"),
    (["--model.backbone.temperature", "0.0"], "--model.backbone.temperature must be in (0, 10]"),
    (["--model.backbone.top_k", "1"], "--model.backbone.top_k must be 0 (off) or >= 2"),
    (["--model.backbone.lora_alpha", "0"], "--model.backbone.lora_alpha must be between 1 and 65536, got 0"),
    (["--model.backbone.lora_alpha", "-16"], "--model.backbone.lora_alpha must be between 1 and 65536"),
    (["--trainer.max_epochs", "-1"], "--trainer.max_epochs must be a whole number >= 1, got -1"),
    (["--trainer.max_epochs", "null"], "--trainer.max_epochs must be a whole number >= 1, got None"),
    (["--data.val", "reasoning_gym:basic_arithmetic?size=4"], "--data.val is given but --trainer.limit_val_batches "
                                                              "is 0"),
]

TRAINER_FLAGS = [
    (["--trainer.accumulate_grad_batches", "2"], "--trainer.accumulate_grad_batches 2 is not supported: TracerModule "
                                                 "takes its GSPO steps itself (manual optimization)"),
    (["--trainer.gradient_clip_val", "1.0"], "--model.gspo.max_grad_norm"),
    (["--trainer.gradient_clip_algorithm", "norm"], "--model.gspo.max_grad_norm"),
    (["--trainer.overfit_batches", "2"], "--trainer.overfit_batches 2 is not supported"),
    (["--trainer.barebones", "true"], "--trainer.barebones True is not supported"),
    (["--trainer.limit_train_batches", "0.5"], "--trainer.limit_train_batches 0.5: the training problems are a "
                                               "stream of unknown length"),
    (["--trainer.limit_train_batches", "-1"], "--trainer.limit_train_batches must be a number of batches >= 0"),
    (["--trainer.limit_train_batches", "2.0"], "--trainer.limit_train_batches must be a number of batches >= 0"),
    (["--trainer.limit_val_batches", "-1"], "--trainer.limit_val_batches must be a number of batches >= 0"),
    (["--trainer.limit_test_batches", "1.5"], "--trainer.limit_test_batches must be a number of batches >= 0"),
    (["--trainer.val_check_interval", "0.5"], "--trainer.val_check_interval must be a number of training batches"),
    (["--trainer.val_check_interval", "0"], "--trainer.val_check_interval must be a number of training batches"),
    (["--trainer.precision", "16-mixed"], "--trainer.precision 16-mixed is not supported"),
    (["--trainer.precision", "bf16-mixed"], "--model.backbone.precision (fp32, bf16, fp16 or 4bit)"),
    (["--seed_everything", "-1"], "--seed_everything must be a whole number from 0 to 4294967295"),
    (["--seed_everything", "4294967296"], "--seed_everything must be a whole number from 0 to 4294967295"),
    (["--trainer.strategy", "bogus"], "invalid configuration: You selected an invalid strategy name"),
    (["--trainer.devices", "0"], "invalid trainer setting: `Trainer(devices='0')` value is not a valid input"),
    (["--trainer.devices", "3"], "--trainer.strategy: DDPStrategy cannot train TracerModule"),
    (["--trainer.strategy", "fsdp"], "The strategy `fsdp` requires a GPU accelerator"),
    (["--trainer.accelerator", "mps"], "invalid trainer setting: `MPSAccelerator` can not run on your system"),
]


@pytest.mark.parametrize("extra, message", NOTHING_LEARNS + TRAINER_FLAGS)
def test_settings_that_cannot_train_are_one_line_errors_before_the_model_loads(monkeypatch, capsys, extra, message):
    line = one_line_error(monkeypatch, capsys, ["fit", "-c", TINY, "--trainer.logger=false", *extra])
    assert message in line


def test_a_gpu_accelerator_without_a_gpu_is_refused(monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    for name in ("gpu", "cuda"):
        line = one_line_error(monkeypatch, capsys, ["fit", "-c", TINY, f"--trainer.accelerator={name}"])
        assert f"--trainer.accelerator {name}: torch sees no CUDA GPU on this machine; use --trainer.accelerator cpu" \
            in line


@pytest.mark.parametrize("stage, extra, message", [
    ("test", ["--trainer.limit_test_batches", "0"], "--trainer.limit_test_batches is 0: test would evaluate nothing"),
    ("validate", ["--data.val", "reasoning_gym:basic_arithmetic?size=4"],
     "--trainer.limit_val_batches is 0: validate would evaluate nothing"),
])
def test_an_evaluation_that_would_run_no_batch_is_refused_before_the_model_loads(monkeypatch, capsys, stage, extra,
                                                                                 message):
    assert message in one_line_error(monkeypatch, capsys, [stage, "-c", TINY, "--trainer.logger=false", *extra])


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_the_vllm_overlay_without_vllm_is_refused_before_the_model_loads(monkeypatch, capsys):
    line = one_line_error(monkeypatch, capsys, ["fit", "-c", TINY, "-c", str(CONFIGS / "engines" / "vllm.yaml"),
                                                "--trainer.logger=false"])
    assert "--model.engine VLLMEngine needs vLLM, which is not installed" in line


def test_the_wandb_overlay_without_a_key_or_offline_mode_is_refused(tmp_path, monkeypatch, capsys):
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_ENTITY"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HOME", "WANDB_CONFIG_DIR", "WANDB_DIR", "WANDB_CACHE_DIR"):  # no stored login anywhere
        monkeypatch.setenv(name, str(tmp_path / "home"))
    line = one_line_error(monkeypatch, capsys, ["fit", "-c", TINY, "-c", str(CONFIGS / "loggers" / "wandb.yaml")])
    assert "--trainer.logger WandbLogger cannot start (No API key configured" in line
    assert "WANDB_MODE=offline" in line


@pytest.mark.parametrize("content, message", [
    ("", "-c {name}: the file holds no settings (it is empty or only comments)"),
    ("# only a comment\n", "-c {name}: the file holds no settings"),
    ("model:\n  gspo:\n    lr: 0.1\n    lr: 0.2\n", "-c {name} line 4: the key 'lr' is given twice (first on line 3)"),
    ("trainer:\n  max_epochs: 1\ntrainer:\n  max_epochs: 2\n", "-c {name} line 3: the key 'trainer' is given twice"),
    ("- a\n- b\n", "-c {name}: expected a mapping of settings (trainer:, model:, data:), found list"),
    ("model: [\n", "-c {name} line 2: not valid YAML"),
    (b"\xff\xfe\x00 model", "-c {name}: not UTF-8 text"),
])
def test_config_files_that_are_not_one_mapping_of_distinct_settings_are_refused(tmp_path, monkeypatch, capsys,
                                                                                content, message):
    path = tmp_path / "overlay.yaml"
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    line = one_line_error(monkeypatch, capsys, ["fit", "-c", TINY, "-c", "overlay.yaml"])
    assert message.format(name="overlay.yaml") in line


def test_a_config_file_that_is_missing_or_a_directory_is_named(tmp_path, monkeypatch, capsys):
    (tmp_path / "adir.yaml").mkdir()
    assert "-c nosuch.yaml: no such file" in one_line_error(monkeypatch, capsys, ["fit", "-c", "nosuch.yaml"])
    assert "-c adir.yaml: not a regular file" in one_line_error(monkeypatch, capsys, ["fit", "--config=adir.yaml"])


def test_a_checkpoint_of_the_other_regret_matching_variant_is_refused():
    from tracer_pl.cli import check_controller_variant
    from tracer_pl.errors import ConfigError

    saved = {"hyper_parameters": {"controllers": {"variant": "rm+"}}}
    check_controller_variant(saved, {"controllers": {"variant": "rm+"}})
    with pytest.raises(ConfigError, match=r"^--model.controllers.variant: the checkpoint's controllers were trained "
                                          r"with rm\+, this run has rm; set --model.controllers.variant rm\+"):
        check_controller_variant(saved, {"controllers": {"variant": "rm"}})


@pytest.mark.e2e
def test_testing_an_rm_plus_checkpoint_with_the_default_variant_is_one_line(tmp_path, monkeypatch, capsys):
    from tracer_pl.cli import build_cli, main

    build_cli(["fit", "-c", TINY, FAKE, "--model.controllers.variant=rm+", "--trainer.limit_train_batches=1",
               "--trainer.enable_progress_bar=false"])
    monkeypatch.setattr("sys.argv", ["tracer-pl", "test", "-c", TINY, FAKE, "--ckpt_path=last",
                                     "--trainer.enable_progress_bar=false"])
    with pytest.raises(SystemExit) as stop:
        main()
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err
    assert "tracer-pl: error: --model.controllers.variant: the checkpoint's controllers were trained with rm+" in err
    build_cli(["test", "-c", TINY, FAKE, "--model.controllers.variant=rm+", "--ckpt_path=last", "--data.test_limit=2",
               "--trainer.enable_progress_bar=false"])  # with the checkpoint's variant it evaluates
    assert (tmp_path / "runs/tiny/logs/version_1/test_metrics.json").exists()


@pytest.mark.e2e
def test_test_sets_of_the_same_name_each_get_their_own_metrics_and_records(tmp_path):
    from tracer_pl.cli import build_cli

    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    for path in ("a/x.jsonl", "b/x.jsonl", "x1.jsonl"):
        (tmp_path / path).write_text('{"question": "1+1?", "gold": "2"}\n{"question": "2+2?", "gold": "4"}\n')
    build_cli(["test", "-c", TINY, FAKE, "--data.test=[a/x.jsonl, b/x.jsonl, x1.jsonl]",
               "--trainer.enable_progress_bar=false"])
    run = tmp_path / "runs/tiny/logs/version_0"
    metrics = json.loads((run / "test_metrics.json").read_text())
    names = sorted({key.split("/")[1] for key in metrics})
    assert names == ["x0", "x0@argmax", "x1", "x1@argmax", "x1_2", "x1_2@argmax"]  # before: x0, x1, x1 collided
    for name in ("x0", "x1", "x1_2"):
        records = (run / f"test_records_{name}.jsonl").read_text().splitlines()
        assert len(records) == 2


@pytest.mark.e2e
def test_validation_during_fit_runs_when_its_batches_are_allowed(tmp_path):
    """``--data.val`` with ``--trainer.limit_val_batches 1.0``: the set is evaluated at the end of the epoch."""
    from tracer_pl.cli import build_cli

    build_cli(["fit", "-c", TINY, FAKE, "--data.val=reasoning_gym:basic_arithmetic?size=4",
               "--trainer.limit_val_batches=1.0", "--trainer.limit_train_batches=2",
               "--trainer.enable_progress_bar=false"])
    run = tmp_path / "runs/tiny/logs/version_0"
    assert len((run / "val_records_basic_arithmetic.jsonl").read_text().splitlines()) == 4
    assert "val/basic_arithmetic/accuracy" in (run / "metrics.csv").read_text().splitlines()[0].split(",")


@pytest.mark.parametrize("settings", [{"temperature": "hot"}, {"temperature": float("inf")}, {"temperature": 0},
                                      {"lora_alpha": -16}, {"top_k": 1}])
def test_backbone_settings_from_python_are_checked_as_from_the_command_line(settings):
    from tracer_pl.engines.base import BackboneConfig
    from tracer_pl.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"^--model.backbone.{next(iter(settings))} must be"):
        BackboneConfig(**settings)  # "hot" was a TypeError; inf, -16 and top_k 1 were accepted
