"""A tiny random causal LM and a byte-level tokenizer, built in code in well under a second.

They make the real code paths (chat template, batched generation, LoRA adapters, log-probs, 4-bit layers) run in
unit tests and in ``configs/tiny.yaml`` without downloading anything. What the tiny model says is noise.
"""

from __future__ import annotations

import json
import os
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

SPECIAL_TOKENS = ["<|pad|>", "<|im_start|>", "<|im_end|>"]

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ByteTokenizer(PreTrainedTokenizer):
    """Every UTF-8 byte is a token (ids 0-255), plus pad, ``<|im_start|>`` and ``<|im_end|>`` (the EOS)."""

    vocab_files_names = {"vocab_file": "byte_vocab.json"}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, vocab_file: str | None = None, **kwargs) -> None:
        kwargs.setdefault("pad_token", "<|pad|>")
        kwargs.setdefault("eos_token", "<|im_end|>")
        kwargs.setdefault("bos_token", None)
        kwargs.setdefault("padding_side", "left")
        kwargs.setdefault("chat_template", CHATML_TEMPLATE)
        kwargs.setdefault("extra_special_tokens", ["<|im_start|>"])
        self._special = {token: 256 + i for i, token in enumerate(SPECIAL_TOKENS)}
        super().__init__(**kwargs)

    @property
    def vocab_size(self) -> int:
        return 256 + len(SPECIAL_TOKENS)

    def get_vocab(self) -> dict[str, int]:
        vocab = {chr(i) if i >= 32 else f"<0x{i:02X}>": i for i in range(256)}
        vocab.update(self._special)
        return vocab

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        return [f"<0x{b:02X}>" for b in text.encode("utf-8")]

    def _convert_token_to_id(self, token: str) -> int:
        if token in self._special:
            return self._special[token]
        if token.startswith("<0x") and token.endswith(">") and len(token) == 6:
            return int(token[3:5], 16)
        return self._special["<|pad|>"]

    def _convert_id_to_token(self, index: int) -> str:
        if index >= 256:
            return SPECIAL_TOKENS[index - 256]
        return f"<0x{index:02X}>"

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        data = bytearray()
        text = []
        for token in tokens:
            if token in self._special:
                text.append(data.decode("utf-8", errors="replace") + token)
                data = bytearray()
            else:
                data.append(int(token[3:5], 16))
        return "".join(text) + data.decode("utf-8", errors="replace")

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str]:
        path = os.path.join(save_directory, (filename_prefix or "") + "byte_vocab.json")
        with open(path, "w") as f:
            json.dump({"bytes": 256, "special": SPECIAL_TOKENS}, f)
        return (path,)


def build_tiny_model(
    arch: Literal["qwen2", "llama"] = "qwen2", seed: int = 0
) -> tuple[PreTrainedModel, ByteTokenizer]:
    """A random 2-layer model (hidden 64, 4 heads, 2 KV heads) in fp32 and its byte tokenizer."""
    tokenizer = ByteTokenizer()
    shape = dict(
        vocab_size=tokenizer.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
        tie_word_embeddings=False,
    )
    config = Qwen2Config(**shape) if arch == "qwen2" else LlamaConfig(**shape)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = (Qwen2ForCausalLM if arch == "qwen2" else LlamaForCausalLM)(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.float().eval(), tokenizer
