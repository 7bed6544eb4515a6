"""TRL reward functions in a role's GSPO reward, and a role's reward in TRL's signature."""

from __future__ import annotations

import re
import types

import pytest

pytest.importorskip("trl")

from trl.rewards import accuracy_reward, think_format_reward  # noqa: E402

from tests.helpers.paths import TINY  # noqa: E402
from tracer_pl.core.agent import Messages  # noqa: E402
from tracer_pl.core.problem import Problem  # noqa: E402
from tracer_pl.core.roles import TRL_COLUMNS, DialogueView, Proposer, Reviewer, completions_form  # noqa: E402
from tracer_pl.errors import ConfigError  # noqa: E402

GSM = Problem(question="How many legs do 3 cats have?", gold="12", dataset="gsm8k", uid="cats")
RIGHT_THINKING = "<think>3 cats, 4 legs each.</think>\nFinal answer: \\boxed{12}"
WRONG_PLAIN = "Final answer: 13"

CALLS: list[dict] = []
"""What :func:`record_call` received, one entry per call."""


def record_call(prompts, completions: list[str], **kwargs) -> list[float]:
    """A standard-form reward that records its arguments and scores 0 (named in YAML by the fit below)."""
    CALLS.append({"prompts": prompts, "completions": completions, **kwargs})
    return [0.0] * len(completions)


def test_trl_accuracy_and_think_format_rewards_work_unchanged():
    role = Proposer(extra_rewards=[accuracy_reward, think_format_reward], extra_reward_weights=[1.0, 0.5])
    assert [role.reward_form(fn) for fn in role.extra_rewards] == ["conversational", "conversational"]
    # own reward (+1/-1) + accuracy (1/0) + 0.5 x think format (1/0)
    assert role.score([RIGHT_THINKING, WRONG_PLAIN], DialogueView(problem=GSM)) == [2.5, -1.0]
    math = Problem(question="Compute 1/2 + 1/4.", gold="\\frac{3}{4}", dataset="math500")
    assert role.score(["\\boxed{0.75}", "\\boxed{\\frac{2}{3}}"], DialogueView(problem=math)) == [2.0, -1.0]


def test_both_forms_and_every_column_reach_the_function():
    seen = {}

    def conversational(prompts, completions: list[list[dict[str, str]]], **kwargs):
        seen["conversational"] = (prompts, completions, kwargs)
        return [None] * len(completions)  # None counts as 0

    def standard(prompts, completions, **kwargs):
        seen["standard"] = (prompts, completions, kwargs)
        return [1] * len(completions)

    role = Reviewer(extra_rewards=[conversational, standard], reward_scale=0.0)
    view = DialogueView(problem=GSM, pending_text="4 legs x 3\nFinal answer: 12", pending_answer="12",
                        pending_correct=True, review_text=None, round_index=2)
    assert role.score(["RIGHT\nok", "WRONG\nno"], view, completion_ids=[[1, 2], [3]]) == [1.0, 1.0]
    prompts, completions, kwargs = seen["conversational"]
    assert prompts == [role.messages(view)] * 2 and prompts[0][-1]["role"] == "user"
    assert completions == [[{"role": "assistant", "content": "RIGHT\nok"}],
                           [{"role": "assistant", "content": "WRONG\nno"}]]
    assert set(kwargs) == {*TRL_COLUMNS, "completion_ids"} and kwargs["completion_ids"] == [[1, 2], [3]]
    assert kwargs["solution"] == kwargs["gold"] == kwargs["answer"] == ["12", "12"]
    assert kwargs["question"] == [GSM.question] * 2 and kwargs["dataset"] == ["gsm8k"] * 2
    assert kwargs["uid"] == ["cats"] * 2 and kwargs["pending_answer"] == ["12"] * 2
    assert kwargs["pending_text"] == [view.pending_text] * 2 and kwargs["review_text"] == [None, None]
    prompts, completions, kwargs = seen["standard"]
    assert prompts == [role.render(view)] * 2 and completions == ["RIGHT\nok", "WRONG\nno"]
    forced = Reviewer(extra_rewards=[standard], extra_reward_format="conversational", reward_scale=0.0)
    forced.score(["RIGHT"], view)
    assert seen["standard"][1] == [[{"role": "assistant", "content": "RIGHT"}]]


class CallableReward:
    def __call__(self, completions: list[list[dict]], **kwargs):
        return [0.0] * len(completions)


def test_the_form_is_read_from_the_completions_annotation():
    def plain(prompts, completions, **kwargs): ...

    def texts(prompts, completions: list[str], **kwargs): ...

    def messages(prompts, completions: list[Messages], **kwargs): ...  # a string under future annotations

    def ids_only(completion_ids, **kwargs): ...

    assert completions_form(accuracy_reward) == completions_form(think_format_reward) == "conversational"
    assert completions_form(CallableReward()) == completions_form(messages) == "conversational"
    assert completions_form(plain) == completions_form(texts) == completions_form(ids_only) == "standard"
    assert completions_form(len) == "standard"  # no readable signature


def test_a_function_given_the_wrong_form_names_the_setting():
    role = Proposer(extra_rewards=[think_format_reward], extra_reward_format="standard")
    with pytest.raises(ConfigError) as error:
        role.score([RIGHT_THINKING], DialogueView(problem=GSM))
    message = str(error.value)
    assert message.startswith("proposer: extra reward think_format_reward failed on completions given as strings (")
    assert message.endswith("if it expects the conversational form, set extra_reward_format: conversational on the "
                            "role") and "\n" not in message

    def one_short(prompts, completions, **kwargs):
        return [0.0] * (len(completions) - 1)

    with pytest.raises(ConfigError, match="^proposer: extra reward one_short returned 1 scores for 2 completions"):
        Proposer(extra_rewards=[one_short]).score(["a", "b"], DialogueView(problem=GSM))
    with pytest.raises(ValueError, match="extra_reward_format must be auto, standard or conversational, got 'chat'"):
        Proposer(extra_reward_format="chat")
    with pytest.raises(ValueError, match="extra_rewards must be functions .* got 'trl.rewards.accuracy_reward'"):
        Proposer(extra_rewards=["trl.rewards.accuracy_reward"])


def test_as_reward_function_finds_the_gold_in_solution():
    fn = Proposer().as_reward_function()
    conversational = [[{"role": "assistant", "content": "Final answer: 12"}]]
    assert fn(prompts=["p"], completions=conversational, solution=["12"]) == [1.0]
    worked = "Three cats have $3 \\cdot 4 = \\boxed{12}$ legs."
    assert fn(prompts=["p"], completions=["Final answer: 12"], solution=[worked]) == [1.0]
    # a LaTeX gold without a dataset column is graded by math-verify (gsm8k would compare floats)
    assert fn(prompts=["p", "p"], completions=["\\boxed{0.75}", "\\boxed{2/3}"],
              solution=["\\frac{3}{4}", "\\frac{3}{4}"]) == [1.0, -1.0]
    assert fn(prompts=["p"], completions=["Final answer: 1234"], solution=["1,234"]) == [1.0]
    # gold, then answer, then solution; rows without one score None
    assert fn(prompts=["p", "p"], completions=["Final answer: 5", "x"], gold=["5", None], answer=["6", None],
              solution=["7", None]) == [1.0, None]
    assert fn(prompts=["p"], completions=["x"], solution=["\\boxed{}"]) == [None]
    assert fn(prompts=["p"], completions=["Final answer: 12"], solution=["12"], trainer_state=object(),
              log_extra=None, completion_ids=[[1]]) == [1.0]  # what GRPOTrainer adds is ignored
    with pytest.raises(ConfigError, match="unknown answer format 'aime'"):
        fn(prompts=["p"], completions=["x"], solution=["12"], dataset=["aime"])


@pytest.mark.e2e
def test_trl_rewards_train_through_the_command_line(run_dir, monkeypatch):
    import trl.rewards.accuracy_rewards as accuracy_module
    import trl.rewards.format_rewards as format_module

    from tracer_pl.cli import build_cli

    parsed, matched = [], []
    real_parse = accuracy_module.parse

    def parse(text, *args, **kwargs):
        parsed.append(text)
        return real_parse(text, *args, **kwargs)

    def match(pattern, text, flags=0):
        matched.append(text)
        return re.match(pattern, text, flags)

    monkeypatch.setattr(accuracy_module, "parse", parse)
    monkeypatch.setattr(format_module, "re", types.SimpleNamespace(match=match, DOTALL=re.DOTALL,
                                                                   MULTILINE=re.MULTILINE))
    CALLS.clear()
    rewards = "[trl.rewards.accuracy_reward, trl.rewards.think_format_reward, tests.core.test_trl_rewards.record_call]"
    cli = build_cli(["fit", "-c", TINY, "--trainer.limit_train_batches=2", "--trainer.logger=false",
                     f"--model.proposer.init_args.extra_rewards={rewards}",
                     f"--model.reviewer.init_args.extra_rewards={rewards}"])
    assert cli.trainer.global_step > 0 and "train/proposer/reward" in cli.trainer.logged_metrics
    assert [fn.__name__ for fn in cli.model.proposer.extra_rewards] == [
        "accuracy_reward", "think_format_reward", "record_call"]
    assert CALLS, "no extra reward was called"
    for call in CALLS:
        n, solution = len(call["completions"]), call["solution"]
        assert all(isinstance(c, str) for c in call["completions"] + call["prompts"])
        assert len(solution) == n and len(set(solution)) == 1 and solution[0].lstrip("-").isdigit()
    # the real functions read the same completions, as message contents, and the gold from `solution`
    completions = [c for call in CALLS for c in call["completions"]]
    assert matched == completions
    golds = {call["solution"][0] for call in CALLS}
    assert golds <= set(parsed) and set(completions) <= set(parsed) | golds
