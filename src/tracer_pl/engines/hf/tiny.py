"""A tiny random causal LM and a byte-level tokenizer, built in code in a few milliseconds.

They make the real code paths (chat template, batched generation, LoRA adapters, log-probs, 4-bit layers) run
in unit tests and in ``configs/tiny.yaml`` without downloading anything. What the tiny model says is noise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizer,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from tracer_pl.errors import ConfigError, DataError

NUM_BYTES = 256
SPECIAL_TOKENS = ("<|pad|>", "<|im_start|>", "<|im_end|>")
"""Ids 256, 257, 258: padding, start of a chat turn, end of a chat turn (the end-of-sequence token)."""

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""ChatML, as used by Qwen2 and SmolLM2: ``<|im_start|>role\\ncontent<|im_end|>\\n`` per message."""

_VOCAB_FILE = "byte_vocab.json"


def _byte_token(value: int) -> str:
    return f"<0x{value:02X}>"


class ByteTokenizer(PreTrainedTokenizer):
    """Every UTF-8 byte is a token (ids 0-255, written ``<0x41>``), then the three :data:`SPECIAL_TOKENS`.

    Padding is on the left and ``<|im_end|>`` ends a sequence. ``save_pretrained`` writes the chat template
    and a small vocabulary file, and ``ByteTokenizer.from_pretrained`` reads them back.

    Args:
        vocab_file: The vocabulary file written by ``save_pretrained`` (checked: the vocabulary is fixed).
        **kwargs: Passed to :class:`~transformers.PreTrainedTokenizer` (``from_pretrained`` supplies the saved
            settings this way).
    """

    vocab_files_names = {"vocab_file": _VOCAB_FILE}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, vocab_file: str | None = None, **kwargs) -> None:
        if vocab_file is not None:
            _check_vocab_file(Path(vocab_file))
        kwargs.setdefault("pad_token", SPECIAL_TOKENS[0])
        kwargs.setdefault("eos_token", SPECIAL_TOKENS[2])
        kwargs.setdefault("bos_token", None)
        kwargs.setdefault("padding_side", "left")
        kwargs.setdefault("chat_template", CHATML_TEMPLATE)
        kwargs.setdefault("extra_special_tokens", [SPECIAL_TOKENS[1]])
        self._special_ids = {token: NUM_BYTES + i for i, token in enumerate(SPECIAL_TOKENS)}
        super().__init__(**kwargs)

    @property
    def vocab_size(self) -> int:
        return NUM_BYTES + len(SPECIAL_TOKENS)

    def get_vocab(self) -> dict[str, int]:
        vocab = {_byte_token(i): i for i in range(NUM_BYTES)}
        vocab.update(self._special_ids)
        return vocab

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        return [_byte_token(b) for b in text.encode("utf-8")]

    def _convert_token_to_id(self, token: str) -> int:
        if token in self._special_ids:
            return self._special_ids[token]
        if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            return int(token[3:5], 16)
        raise ValueError(
            f"{token!r} is not a token of the byte tokenizer (expected '<0xHH>' or one of "
            f"{list(SPECIAL_TOKENS)})"
        )

    def _convert_id_to_token(self, index: int) -> str:
        if 0 <= index < NUM_BYTES:
            return _byte_token(index)
        return SPECIAL_TOKENS[index - NUM_BYTES]

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        """Join byte tokens into UTF-8 text (bad sequences become U+FFFD); special tokens stay as written."""
        pieces: list[str] = []
        pending = bytearray()
        for token in tokens:
            if token in self._special_ids:
                pieces.append(pending.decode("utf-8", errors="replace") + token)
                pending = bytearray()
            else:
                pending.append(self._convert_token_to_id(token))
        return "".join(pieces) + pending.decode("utf-8", errors="replace")

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str]:
        path = Path(save_directory) / f"{filename_prefix + '-' if filename_prefix else ''}{_VOCAB_FILE}"
        path.write_text(json.dumps({"bytes": NUM_BYTES, "special_tokens": list(SPECIAL_TOKENS)}))
        return (str(path),)


def _check_vocab_file(path: Path) -> None:
    expected = {"bytes": NUM_BYTES, "special_tokens": list(SPECIAL_TOKENS)}
    try:
        found = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise DataError(f"{path}: cannot read the byte tokenizer's vocabulary ({error})") from error
    if found != expected:
        raise DataError(f"{path}: expected the byte tokenizer's vocabulary {expected}, found {found}")


def build_tiny_model(
    arch: Literal["qwen2", "llama"] = "qwen2", seed: int = 0
) -> tuple[PreTrainedModel, ByteTokenizer]:
    """A random causal LM and its byte tokenizer, in fp32, in eval mode, on the CPU.

    Shape: hidden size 64, 2 layers, 4 attention heads, 2 key-value heads, MLP width 128, untied embeddings,
    vocabulary = the tokenizer's 259 tokens. The same ``arch`` and ``seed`` always give the same weights, and
    the global random state is left untouched.

    Args:
        arch: ``qwen2`` (biases on q/k/v, as in Qwen2) or ``llama``.
        seed: Seed of the weight initialisation.

    Raises:
        ConfigError: ``arch`` is neither ``qwen2`` nor ``llama``.
    """
    classes = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "llama": (LlamaConfig, LlamaForCausalLM)}
    if arch not in classes:
        raise ConfigError(f"tiny model architecture must be one of {sorted(classes)}, got {arch!r}")
    tokenizer = ByteTokenizer()
    config_class, model_class = classes[arch]
    config = config_class(
        vocab_size=tokenizer.vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.float().eval(), tokenizer
