"""An exported SmolLM2 adapter loads on "another machine": ``AutoPeftModelForCausalLM`` with only the hub's cache.

The child process sees no tracer_pl cache and no network: its Hugging Face cache holds one hub-style snapshot of
``HuggingFaceTB/SmolLM2-135M-Instruct`` (built here from the converted local weights, as a download would lay it
out), so the adapter loads only if its ``adapter_config.json`` names the base by hub id.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tracer_pl.engines.hf.export import RunSummary
from tracer_pl.engines.hf.models import smollm2_directory
from tracer_pl.engines.hf.policy import HFPolicy

pytestmark = [pytest.mark.slow, pytest.mark.subprocess, pytest.mark.timeout(1800)]  # a conversion on a busy CPU

HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
REVISION = "0" * 40
IDS = [1, 9690, 314, 216, 3937, 30, 2]

LOAD = """
import json, sys, torch
from peft import AutoPeftModelForCausalLM
from safetensors.torch import save_file

folder, out, ids = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
model = AutoPeftModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
with torch.no_grad():
    logits = model(input_ids=torch.tensor([ids])).logits[0]
lora = {k: v.contiguous() for k, v in model.state_dict().items() if "lora_" in k}
save_file({**lora, "logits": logits.contiguous()}, out)
base = model.get_base_model()
print(json.dumps({"base": model.peft_config["default"].base_model_name_or_path, "name_or_path": base.name_or_path}))
"""


def hub_snapshot(cache, source):
    """``cache`` laid out as the hub's cache after downloading ``HUB_ID``, its files being those of ``source``."""
    repo = cache / ("models--" + HUB_ID.replace("/", "--"))
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    for file in source.iterdir():
        (snapshot / file.name).symlink_to(file.resolve())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    return snapshot


def test_an_exported_smollm2_adapter_loads_from_the_hub_id_alone(tmp_path):
    policy = HFPolicy.from_pretrained("smollm2-135m-instruct", max_new_tokens=4, device="cpu")  # converts once
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # stands in for training: fresh adapters have B = 0 and change nothing
        for name, parameter in policy.model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
    folders = policy.save_adapters(tmp_path / "adapters", run=RunSummary(base_model="smollm2-135m-instruct"))
    config = json.loads((folders["proposer"] / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == HUB_ID
    facts = json.loads((folders["proposer"] / "tracer_pl.json").read_text())
    assert "Q4_1 GGUF" in facts["base_model"]["converted_from"]

    hub = tmp_path / "elsewhere" / "hf"
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "TRACER_PL", "TRANSFORMERS"))}
    env.update(HF_HOME=str(hub), HF_HUB_CACHE=str(hub / "hub"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TRACER_PL_CACHE=str(tmp_path / "elsewhere" / "no-tracer-cache"))
    out = tmp_path / "loaded.safetensors"
    command = [sys.executable, "-c", LOAD, str(folders["proposer"]), str(out), json.dumps(IDS)]
    (hub / "hub").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir(exist_ok=True)
    missing = subprocess.run(command, env=env, cwd=tmp_path / "elsewhere", capture_output=True, text=True, timeout=900)
    assert missing.returncode != 0 and "OSError" in missing.stderr  # without the hub's files nothing serves the base
    hub_snapshot(hub / "hub", smollm2_directory())
    done = subprocess.run(command, env=env, cwd=tmp_path / "elsewhere", capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["base"] == HUB_ID and report["name_or_path"] == HUB_ID
    assert not (tmp_path / "elsewhere" / "no-tracer-cache").exists()

    loaded = load_file(out)
    trained = {name.replace(".proposer.", ".default."): parameter.detach()
               for name, parameter in policy.model.named_parameters() if ".proposer." in name}
    assert set(loaded) - {"logits"} == set(trained)
    assert all(torch.equal(loaded[name], weight) for name, weight in trained.items())
    policy.use("proposer")
    with torch.no_grad():
        expected = policy.model(input_ids=torch.tensor([IDS])).logits[0]
        with policy.model.disable_adapter():
            base_only = policy.model(input_ids=torch.tensor([IDS])).logits[0]
    assert torch.allclose(loaded["logits"], expected, atol=1e-4)
    assert not torch.allclose(base_only, expected, atol=1e-3)  # the adapter changes the outputs it was loaded for
