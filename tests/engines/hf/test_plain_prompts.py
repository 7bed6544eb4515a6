"""Plain-text prompts (``prompt_style: plain``): given to the model as the tokenizer encodes them, no template."""

from types import SimpleNamespace

import pytest

from tracer_pl.core.agent import text_prompt
from tracer_pl.core.problem import Problem
from tracer_pl.core.roles import Proposer, Reviewer
from tracer_pl.engines.hf import generation
from tracer_pl.engines.hf.policy import HFPolicy
from tracer_pl.errors import DataError


@pytest.fixture(scope="module")
def policy():
    return HFPolicy.from_pretrained("tiny-qwen2", max_new_tokens=3)


def test_a_plain_prompt_is_encoded_as_the_tokenizer_encodes_the_text(policy):
    text = "Solve: 2 + 2\n\nSolution:\n"
    rendered = generation.render(policy, text_prompt(text))
    assert rendered.endswith(text) and "<|im_start|>" not in rendered
    expected = policy.tokenizer(text, add_special_tokens=True)["input_ids"]
    assert policy.tokenizer(rendered, add_special_tokens=False)["input_ids"] == expected
    (completions,) = policy.generate("proposer", [text_prompt(text)], 1)
    assert completions[0].prompt_ids.tolist() == expected


class StubTokenizer:
    """Encodes each character as its code, after a beginning-of-sequence id 1 when ``adds_bos``."""

    bos_token, bos_token_id = "<s>", 1

    def __init__(self, adds_bos):
        self.adds_bos = adds_bos

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": ([1] if add_special_tokens and self.adds_bos else []) + [ord(c) for c in text]}


@pytest.mark.parametrize("adds_bos", [True, False])
def test_a_tokenizer_that_adds_a_bos_token_gets_it_before_a_plain_prompt(adds_bos):
    stub = SimpleNamespace(tokenizer=StubTokenizer(adds_bos))
    assert generation.render(stub, text_prompt("hi")) == ("<s>hi" if adds_bos else "hi")


def test_the_context_check_counts_a_plain_prompts_history(policy):
    """A chat prompt shows two earlier utterances, a plain one 1 + history_turns: the check needs more room."""
    problem = Problem(question="What is 2 + 2?", gold="4", dataset="gsm8k", uid="q")
    chat = policy._turn_tokens(problem, Proposer())
    plain = policy._turn_tokens(problem, Proposer(prompt_style="plain", history_turns=4))
    assert plain - chat >= 3 * policy.max_new_tokens  # three more utterances of up to max_new_tokens each
    context = policy.model.config.max_position_embeddings
    original = policy.max_new_tokens
    try:
        chat_prompt = chat - 3 * original  # the chat prompt alone, with one-letter utterances
        policy.max_new_tokens = (context - chat_prompt) // 3  # the chat turn fits, the plain one cannot
        policy.check_prompts([problem], [Proposer(), Reviewer()])
        with pytest.raises(DataError, match="q: a turn of this problem can need"):
            policy.check_prompts([problem], [Proposer(prompt_style="plain"), Reviewer(prompt_style="plain")])
    finally:
        policy.max_new_tokens = original
