"""The byte tokenizer and the tiny random models used by every fast test."""

import time

import pytest
import torch

from tracer_pl.engines.hf.tiny import ByteTokenizer, build_tiny_model
from tracer_pl.errors import ConfigError, DataError

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2 × 3 = ?"}]
# ChatML written out by hand: <|im_start|>=257, <|im_end|>=258, everything else is UTF-8 bytes
CHATML = (
    "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2 × 3 = ?<|im_end|>\n<|im_start|>assistant\n"
)


def byte_ids(text):
    return list(text.encode("utf-8"))


def test_text_is_utf8_bytes_and_decodes_back():
    tokenizer = ByteTokenizer()
    text = "héllo, 世界 ✓"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids == byte_ids(text)  # 'é' is two bytes, '世' three
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode(byte_ids("ab") + [258]) == "ab<|im_end|>"
    assert tokenizer.decode(byte_ids("ab") + [258], skip_special_tokens=True) == "ab"
    assert tokenizer.decode([0xE4, 0xB8]) == "\ufffd"  # a cut multi-byte character does not raise


def test_special_tokens_padding_and_vocabulary():
    tokenizer = ByteTokenizer()
    assert (
        tokenizer.pad_token_id,
        tokenizer.convert_tokens_to_ids("<|im_start|>"),
        tokenizer.eos_token_id,
    ) == (256, 257, 258)
    assert tokenizer.bos_token_id is None and len(tokenizer) == tokenizer.vocab_size == 259
    assert tokenizer.convert_tokens_to_ids("<0x41>") == 65 and tokenizer.convert_ids_to_tokens(65) == "<0x41>"
    batch = tokenizer(["ab", "abcd"], padding=True)
    assert batch["input_ids"] == [[256, 256, 97, 98], [97, 98, 99, 100]]  # padded on the left
    assert batch["attention_mask"] == [[0, 0, 1, 1], [1, 1, 1, 1]]
    with pytest.raises(ValueError, match="not a token"):
        tokenizer.convert_tokens_to_ids("A")


def test_chat_template_is_chatml():
    tokenizer = ByteTokenizer()
    assert tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False) == CHATML
    ids = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, return_dict=True)["input_ids"]
    expected = []
    for piece in CHATML.split("<|im_start|>")[1:]:
        body, *rest = piece.split("<|im_end|>")
        expected += [257] + byte_ids(body) + ([258] + byte_ids(rest[0]) if rest else [])
    assert ids == expected


def test_save_and_reload(tmp_path):
    ByteTokenizer().save_pretrained(tmp_path)
    reloaded = ByteTokenizer.from_pretrained(tmp_path)
    text = ByteTokenizer().apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert reloaded.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False) == text
    assert (
        reloaded(text, add_special_tokens=False)["input_ids"]
        == ByteTokenizer()(text, add_special_tokens=False)["input_ids"]
    )
    assert (reloaded.pad_token_id, reloaded.eos_token_id, reloaded.padding_side) == (256, 258, "left")
    (tmp_path / "byte_vocab.json").write_text('{"bytes": 255, "special_tokens": []}')
    with pytest.raises(DataError, match="byte_vocab.json"):
        ByteTokenizer.from_pretrained(tmp_path)


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_tiny_model_shape_speed_and_determinism(arch):
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    start = time.perf_counter()
    model, tokenizer = build_tiny_model(arch)
    assert time.perf_counter() - start < 1.0
    assert torch.rand(1) == expected_next  # the global random state is untouched
    config = model.config
    assert (config.model_type, config.hidden_size, config.num_hidden_layers) == (arch, 64, 2)
    assert (config.num_attention_heads, config.num_key_value_heads, config.intermediate_size) == (4, 2, 128)
    assert config.vocab_size == len(tokenizer) and not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    same, _ = build_tiny_model(arch)
    other, _ = build_tiny_model(arch, seed=1)
    ids = torch.tensor([[257, 104, 105, 258]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        assert logits.shape == (1, 4, 259)
        assert torch.equal(logits, same(input_ids=ids).logits)
        assert not torch.allclose(logits, other(input_ids=ids).logits)


def test_unknown_tiny_architecture():
    with pytest.raises(ConfigError, match="'gpt2'"):
        build_tiny_model("gpt2")
