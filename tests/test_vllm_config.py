"""The vLLM engine overlay parses and validates without vLLM installed (the engine itself: tests/with_vllm)."""

from pathlib import Path

import pytest
import yaml

from tracer_pl.cli import build_cli
from tracer_pl.errors import ConfigError
from tracer_pl.vllm_engine import VLLMEngine

ROOT = Path(__file__).resolve().parents[1]
OVERLAY = ROOT / "configs" / "engines" / "vllm.yaml"


def test_overlay_selects_the_vllm_engine(capsys):
    assert OVERLAY.read_text().startswith("# tracer-pl fit -c configs/quickstart.yaml -c configs/engines/vllm.yaml")
    with pytest.raises(SystemExit):
        build_cli(["fit", "-c", str(ROOT / "configs" / "tiny.yaml"), "-c", str(OVERLAY), "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    engine = printed["model"]["engine"]
    assert engine["class_path"] == "tracer_pl.vllm_engine.VLLMEngine"
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
