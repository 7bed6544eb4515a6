"""The real SmolLM2-135M-Instruct, offline: loads from the packaged GGUF, answers, and trains a few steps."""

import json
import time

import pytest

from tests.helpers.training import fit
from tracer_pl.core.dialogue import DialogueConfig
from tracer_pl.core.gspo import GSPOConfig
from tracer_pl.data.datamodule import ReasoningDataModule
from tracer_pl.engines.hf.models import cache_dir, load_base_model
from tracer_pl.training.module import BackboneConfig

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # a model conversion on a loaded CPU

SOURCE = ("reasoning_gym:basic_arithmetic?size=8&max_terms=2&max_digits=1&allow_negation=false"
          "&allow_parentheses=false&operators=+,-")


def test_smollm2_alias_loads_from_the_cache_and_trains(tmp_path):
    load_base_model("smollm2-135m-instruct")  # converts on first use
    assert (cache_dir() / "models" / "smollm2-135m-instruct" / "model.safetensors").exists()
    start = time.monotonic()
    model, tokenizer = load_base_model("smollm2-135m-instruct")
    assert time.monotonic() - start < 20  # from safetensors, not a new conversion
    assert model.config.model_type == "llama" and tokenizer.chat_template

    module, trainer = fit(tmp_path, ReasoningDataModule(train=SOURCE, test=SOURCE, batch_size=2, test_limit=4),
                          batches=2, seed=0,
                          backbone=BackboneConfig(name="smollm2-135m-instruct", max_new_tokens=24, temperature=0.7),
                          dialogue=DialogueConfig(rounds=3), gspo=GSPOConfig(group_size=2, lr=1e-4))
    exported = json.loads((tmp_path / "adapters/proposer/adapter_config.json").read_text())
    assert exported["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"  # not the local cache path
    card = (tmp_path / "adapters/reviewer/README.md").read_text()
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card and "Q4_1 GGUF" in card
    assert "| training batches | 2 |" in card and "| group size G | 2 |" in card and "| rounds | 3 |" in card
    metrics = trainer.callback_metrics
    assert 0.0 <= float(metrics["train/accuracy"]) <= 1.0
    assert float(metrics["train/proposer/completions/mean_length"]) > 1
    (result,) = trainer.test(module, datamodule=trainer.datamodule, verbose=False)
    assert 0.0 <= result["test/basic_arithmetic/accuracy"] <= 1.0
