"""The vLLM engine overlay parses and validates without vLLM installed (the engine itself: tests/with_vllm)."""

from pathlib import Path

import pytest
import yaml

from tests.helpers.paths import CONFIGS
from tracer_pl.cli import build_cli
from tracer_pl.engines.vllm import VLLMEngine
from tracer_pl.errors import ConfigError

OVERLAY = CONFIGS / "engines" / "vllm.yaml"


def test_overlay_selects_the_vllm_engine(capsys):
    assert OVERLAY.read_text().startswith("# tracer-pl fit -c configs/quickstart.yaml -c configs/engines/vllm.yaml")
    with pytest.raises(SystemExit):
        build_cli(["fit", "-c", str(CONFIGS / "tiny.yaml"), "-c", str(OVERLAY), "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    engine = printed["model"]["engine"]
    assert engine["class_path"] == "tracer_pl.engines.vllm.VLLMEngine"
    assert engine["init_args"]["gpu_memory_utilization"] == 0.3 and engine["init_args"]["max_loras"] is None
    assert printed["model"]["gspo"]["importance_sampling_correction"] is False


@pytest.mark.parametrize(("options", "flag"), [
    ({"gpu_memory_utilization": 0.0}, "gpu_memory_utilization"),
    ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization"),
    ({"keep_versions": 0}, "keep_versions"),
])
def test_impossible_options_name_their_flag(options, flag):
    with pytest.raises(ConfigError, match=flag):
        VLLMEngine(**options)


def test_too_few_lora_slots_is_refused_before_loading():
    with pytest.raises(ConfigError, match="max_loras=1 cannot hold the adapters of 2 roles"):
        VLLMEngine(max_loras=1).build(None, ["proposer", "reviewer"])  # type: ignore[arg-type]


def test_vllm_loads_the_base_the_training_side_loaded(tmp_path):
    from tracer_pl.engines.vllm import base_directory

    assert base_directory(str(tmp_path), tmp_path) == str(tmp_path)  # a local folder as is
    hub = "Qwen/Qwen2.5-0.5B-Instruct"
    assert base_directory(hub, tmp_path) == hub  # a hub id: vLLM finds it in the Hugging Face cache
    saved = Path(base_directory("tiny-qwen2", tmp_path))  # built in code: saved, without adapters
    assert saved == tmp_path / "base" and (saved / "config.json").is_file()
    assert not any("lora" in name for name in _tensor_names(saved / "model.safetensors"))


def _tensor_names(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return list(handle.keys())
