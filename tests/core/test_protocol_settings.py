"""Each setting that selects between the paper's text and the released code: its values, checks and effect."""

import pytest
import torch

from tracer_pl.core.agent import TEXT, plain_text, text_prompt
from tracer_pl.core.controllers import ControllerConfig, StateFeatures, controller_state, vote_bucket
from tracer_pl.core.dialogue import DialogueConfig
from tracer_pl.core.gspo import GSPOConfig, gspo_loss, without_stop_tokens
from tracer_pl.core.problem import Problem
from tracer_pl.core.roles import DialogueView, Proposer, Reviewer, Utterance
from tracer_pl.errors import ConfigError

PROBLEM = Problem(question="What is 40 + 2?", gold="42", dataset="gsm8k")


# ---------------------------------------------------------------- the vote in the controller state
@pytest.mark.parametrize(("vote", "clipped", "whole"), [(3, "+2", "+3"), (-3, "-2", "-3"), (1, "+1", "+1"),
                                                        (0, "+0", "+0")])
def test_the_vote_is_clipped_at_two_or_kept_whole(vote, clipped, whole):
    assert vote_bucket(True, True, vote) == clipped
    assert vote_bucket(True, True, vote, clip=None) == whole
    state = controller_state(StateFeatures(vote_clip=None), has_pending=True, pending_parseable=True, vote=vote,
                             round_index=7, rounds=7)
    assert state == (whole, "last")


def test_vote_clip_reaches_every_controller_and_is_checked():
    assert all(c.features.vote_clip is None for c in ControllerConfig(vote_clip=None).build())
    assert all(c.features.vote_clip == 3 for c in ControllerConfig(vote_clip=3).build())
    with pytest.raises(ConfigError, match="--model.controllers.vote_clip"):
        ControllerConfig(vote_clip=-1)


def test_bundle_seats_take_the_proposer_and_reviewer_modes():
    seats = [("agent0_proposer", True), ("agent1_reviewer", False), ("agent2_proposer", True),
             ("agent3_reviewer", False)]
    built = ControllerConfig(proposer="always_refresh", reviewer="frozen",
                             seats={"agent3_reviewer": "always_skip"}).build(seats, bundles=True)
    assert [c.fixed_action for c in built] == ["refresh", None, "refresh", "skip"]
    assert [c.frozen for c in built] == [False, True, False, False]
    assert [c.name for c in built] == [name for name, _ in seats]
    # without bundles, seats after the first two are learned unless named
    plain = ControllerConfig(proposer="always_refresh").build(seats)
    assert [c.fixed_action for c in plain] == ["refresh", None, None, None]


# ---------------------------------------------------------------- the dialogue's rules
@pytest.mark.parametrize(("field", "value"), [("keep_valuation", "never"), ("unreadable_refresh", "drop"),
                                              ("order", "random"), ("num_agents", 1), ("num_agents", 17)])
def test_dialogue_settings_are_checked(field, value):
    with pytest.raises(ConfigError, match=f"--model.dialogue.{field}"):
        DialogueConfig(**{field: value})


def test_the_defaults_are_the_papers_text():
    config = DialogueConfig()
    assert (config.keep_valuation, config.unreadable_refresh, config.order, config.num_agents) == (
        "counterfactual", "keeps_pending", "lockstep", 2)
    assert GSPOConfig().include_eos and ControllerConfig().vote_clip == 2


def test_an_unreadable_refresh_is_valued_by_what_stays_pending():
    view = DialogueView(problem=PROBLEM, pending_text="Final answer: 42", pending_answer="42", pending_correct=True)
    unreadable = "I could not finish."
    assert Proposer().speaking_value(unreadable, view) == 1.0  # TRACER §1: the correct answer stays
    released = DialogueView(problem=PROBLEM, pending_text="Final answer: 42", pending_answer="42",
                            pending_correct=True, unreadable_replaces_pending=True)
    assert Proposer().speaking_value(unreadable, released) == -1.0  # replaced by no answer
    assert Proposer().speaking_value("Final answer: 42", released) == 1.0


# ---------------------------------------------------------------- prompts
def view_with_history(turns=6):
    history = tuple(Utterance(r, "proposer" if r % 2 else "reviewer", "proposal" if r % 2 else "review",
                              f"utterance of round {r}") for r in range(1, turns + 1))
    return DialogueView(problem=PROBLEM, pending_text="Final answer: 41", pending_answer="41", review_text="WRONG",
                        vote=-1, round_index=turns + 1, history=history)


def test_a_plain_prompt_is_text_with_the_question_pending_solution_and_last_turns():
    view = view_with_history(6)
    prompt = Proposer(prompt_style="plain").messages(view)
    text = plain_text(prompt)
    assert prompt == text_prompt(text) and prompt[0]["role"] == TEXT  # no system message, no chat roles
    assert "What is 40 + 2?" in text and "Pending solution:\nFinal answer: 41" in text
    assert "Dataset: gsm8k" in text and "Final answer:" in text  # the answer format's instruction
    shown = [r for r in range(1, 7) if f"utterance of round {r}" in text]
    assert shown == [3, 4, 5, 6]  # the last 4 utterances
    assert "(round 4, reviewer, review)" in text
    assert text.rstrip().endswith("Solution:")
    review = plain_text(Reviewer(prompt_style="plain", history_turns=2).messages(view))
    assert [r for r in range(1, 7) if f"utterance of round {r}" in review] == [5, 6]
    assert review.rstrip().endswith("Review:") and "RIGHT or WRONG" in review
    none = plain_text(Proposer(prompt_style="plain", history_turns=0).messages(view))
    assert "Recent turns" not in none


def test_chat_prompts_are_unchanged_and_not_plain_text():
    prompt = Proposer().messages(view_with_history(2))
    assert plain_text(prompt) is None and [m["role"] for m in prompt] == ["system", "user"]
    assert "utterance of round" not in prompt[1]["content"]  # the chat prompt shows the latest review only


def test_prompt_settings_are_checked():
    with pytest.raises(ValueError, match="prompt_style"):
        Proposer(prompt_style="raw")
    with pytest.raises(ConfigError, match="history_turns"):
        Reviewer(history_turns=-1)
    assert Proposer().utterances_in_prompt() == 2 and Proposer(prompt_style="plain").utterances_in_prompt() == 5


# ---------------------------------------------------------------- the end-of-sequence token in GSPO
def test_without_stop_tokens_drops_the_last_token_of_stopped_rows_only():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    stopped = torch.tensor([True, False, True, True])
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0]])  # a lone EOS stays
    assert torch.equal(without_stop_tokens(mask, stopped), expected)


def test_leaving_eos_out_changes_the_length_and_the_sum_of_the_ratio():
    """With one step the ratio is 1 either way, but the gradient of the mean log-prob differs: by hand,
    d/dθ of (log p(a) + log p(eos)) / 2 against log p(a) / 1 for a two-token completion."""
    logits = torch.zeros(2, requires_grad=True)  # token 0 = "a", token 1 = EOS
    logp = torch.log_softmax(logits, -1)
    token_logp = torch.stack([logp[0], logp[1]]).unsqueeze(0)
    mask = torch.tensor([[1, 1]])
    advantages = torch.tensor([1.0])
    with_eos = gspo_loss((token_logp * mask).sum(-1), (token_logp * mask).sum(-1).detach(), mask.sum(-1),
                         advantages, GSPOConfig().clip).loss
    (grad_with,) = torch.autograd.grad(with_eos, logits, retain_graph=True)
    kept = without_stop_tokens(mask, torch.tensor([True]))
    without = gspo_loss((token_logp * kept).sum(-1), (token_logp * kept).sum(-1).detach(), kept.sum(-1), advantages,
                        GSPOConfig().clip).loss
    (grad_without,) = torch.autograd.grad(without, logits)
    # uniform p = 1/2: d log p(i)/d logit_j = [i == j] - 1/2
    assert torch.allclose(grad_with, torch.tensor([0.0, 0.0]), atol=1e-7)  # (1 - .5 + 0 - .5) / 2 = 0, both
    assert torch.allclose(grad_without, torch.tensor([-0.5, 0.5]))  # -(1 - 1/2), -(0 - 1/2)


@pytest.mark.parametrize(("build", "flag"), [
    (lambda: DialogueConfig(rounds=2.5), "--model.dialogue.rounds"),
    (lambda: DialogueConfig(num_agents=True), "--model.dialogue.num_agents"),
    (lambda: ControllerConfig(variant="rm++"), "--model.controllers.variant"),
    (lambda: ControllerConfig(proposer="always_speak"), "--model.controllers.proposer"),
    (lambda: ControllerConfig(argmax_tie="random"), "--model.controllers.argmax_tie"),
    (lambda: ControllerConfig(vote_clip=1.5), "--model.controllers.vote_clip"),
    (lambda: ControllerConfig(seed=-1), "--model.controllers.seed"),
])
def test_python_built_settings_are_checked_as_the_command_line_checks_them(build, flag):
    with pytest.raises(ConfigError, match=f"^{flag} must be"):
        build()
