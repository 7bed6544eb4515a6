"""``--model.backbone.chat_template_kwargs``: variables for the chat template wherever a prompt is rendered."""

import pytest
import torch

from tracer_pl.core.problem import Problem
from tracer_pl.core.roles import DialogueView, Proposer
from tracer_pl.engines.base import BackboneConfig
from tracer_pl.engines.hf import generation
from tracer_pl.engines.hf.policy import HFPolicy
from tracer_pl.errors import ConfigError, DataError

# ChatML, plus Qwen3's switch: an empty think block opens the answer when thinking is off
THINKING_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
    "{% if style is defined %}[{{ style }}]{% endif %}{% endif %}"
)
PROMPT = [{"role": "user", "content": "2+2?"}]


def turn_view(problem):
    """The view ``check_prompts`` measures: a pending solution and a review present."""
    return DialogueView(problem=problem, pending_text="x", pending_answer="x", review_text="x", round_index=2)


@pytest.fixture
def policy():
    policy = HFPolicy.from_pretrained("tiny-qwen2", max_new_tokens=3)
    policy.tokenizer.chat_template = THINKING_TEMPLATE
    return policy


def test_template_variables_reach_the_rendered_prompt(policy):
    plain = "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
    assert generation.render(policy, PROMPT) == plain  # no kwargs: the template's defaults
    policy.chat_template_kwargs = {"enable_thinking": False, "style": "brief"}
    assert policy.render(PROMPT) == plain + "<think>\n\n</think>\n\n[brief]"
    policy.chat_template_kwargs = {"enable_thinking": True}
    assert policy.render(PROMPT) == plain


def test_generation_and_the_context_check_use_the_same_rendering(policy):
    policy.chat_template_kwargs = {"enable_thinking": False}
    ((completion,),) = policy.generate("proposer", [PROMPT], 1)
    rendered = policy.tokenizer(policy.render(PROMPT), add_special_tokens=False)["input_ids"]
    assert torch.equal(completion.prompt_ids, torch.tensor(rendered))
    assert "<think>" in policy.tokenizer.decode(completion.prompt_ids)
    problem = Problem(question="q" * 20, gold="1", uid="long")
    policy.max_new_tokens = 1
    context = len(policy.tokenizer(policy.render(Proposer().messages(turn_view(problem))),
                                   add_special_tokens=False)["input_ids"]) + 3
    policy.model.config.max_position_embeddings = context  # fits exactly with the think block counted
    policy.check_prompts([problem], [Proposer()])
    policy.model.config.max_position_embeddings = context - 1
    with pytest.raises(DataError, match="^long: a turn of this problem can need"):
        policy.check_prompts([problem], [Proposer()])


def test_the_setting_is_validated_where_it_is_declared():
    assert BackboneConfig(chat_template_kwargs={"enable_thinking": False}).chat_template_kwargs == {
        "enable_thinking": False}
    with pytest.raises(ConfigError, match=r"^--model.backbone.chat_template_kwargs must be a mapping of template "
                                          r"variables \(e.g. \{enable_thinking: false\}\), got \['enable_thinking'\]"):
        BackboneConfig(chat_template_kwargs=["enable_thinking"])
    with pytest.raises(ConfigError, match="chat_template_kwargs must be keyed by template variable names, got "
                                          "'enable-thinking'"):
        BackboneConfig(chat_template_kwargs={"enable-thinking": False})
    with pytest.raises(ConfigError, match="chat_template_kwargs must be free of the arguments the engine sets .*, "
                                          "got 'tokenize'"):
        BackboneConfig(chat_template_kwargs={"tokenize": True})


def test_the_setting_is_a_command_line_flag(capsys):
    import yaml

    from tests.helpers.paths import TINY
    from tracer_pl.cli import build_cli

    with pytest.raises(SystemExit) as stop:
        build_cli(["fit", "-c", TINY, "--print_config",
                   "--model.backbone.chat_template_kwargs={enable_thinking: false}"])
    assert stop.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["backbone"]["chat_template_kwargs"] == {"enable_thinking": False}


def test_the_backbone_setting_reaches_the_policy():
    policy = HFPolicy.from_config(BackboneConfig(max_new_tokens=3, chat_template_kwargs={"style": "terse"}),
                                  ["proposer"])
    policy.tokenizer.chat_template = THINKING_TEMPLATE
    assert policy.render(PROMPT).endswith("[terse]")
