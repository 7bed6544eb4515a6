import pytest

from tracer_pl.core.problem import Problem
from tracer_pl.core.roles import RIGHT, WRONG, DialogueView, Proposer, Reviewer, parse_verdict

GSM = Problem(question="How many legs do 3 cats have?", gold="12", dataset="gsm8k")
MATH = Problem(question="Compute 1/2 + 1/4.", gold="\\frac{3}{4}", dataset="math500")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("RIGHT\nThe arithmetic checks out.", RIGHT),
        ("WRONG\n3*4 is 12, not 7.", WRONG),
        ("right - looks fine", RIGHT),  # case-insensitive
        ("**WRONG**\nreason", WRONG),  # markdown emphasis
        ("\n\n  Correct\nok", RIGHT),  # leading blank lines; 'correct' counts as RIGHT
        ("Incorrect: off by one", WRONG),
        ("The answer is RIGHT", RIGHT),  # a verdict stated in a sentence
        ("The final answer of 7 is indeed correct.", RIGHT),
        ("The proposed solution is incorrect.", WRONG),
        ("The answer is not correct, it is 9.", WRONG),  # 'not' flips the first stated verdict
        ("The proposed solution is correct, but it's not the correct answer.", RIGHT),  # the first one counts
        ("The final answer is 7.\nIt is wrong.", None),  # only the first line is read
        ("The correct answer is 7.", None),  # 'correct' qualifies a noun: no verdict
        ("Rightly so", None),  # a word boundary is required
        ("", None),
    ],
)
def test_parse_verdict(text, expected):
    assert parse_verdict(text) == expected


@pytest.mark.parametrize(
    "text, reward",
    [
        ("3 cats x 4 legs = 12\nFinal answer: 12", 1.0),
        ("Final answer: 13", -1.0),
        ("I cannot tell.", -1.0),  # unparseable counts as wrong
    ],
)
def test_proposer_reward(text, reward):
    assert Proposer().reward(text, DialogueView(problem=GSM)) == reward


def test_proposer_reward_math_uses_math_verify():
    view = DialogueView(problem=MATH)
    assert Proposer().reward("So it is \\boxed{0.75}", view) == 1.0
    assert Proposer().reward("So it is \\boxed{\\frac{2}{3}}", view) == -1.0


@pytest.mark.parametrize(
    "pending_answer, pending_correct, text, reward",
    [
        ("12", True, "RIGHT\nok", 1.0),  # right about a correct answer
        ("12", True, "WRONG\nno", -1.0),
        ("13", False, "WRONG\nno", 1.0),  # right about a wrong answer
        ("13", False, "RIGHT\nok", -1.0),
        ("12", True, "maybe", 0.0),  # unparseable verdict
        (None, False, "WRONG\nnothing to check", 0.0),  # nothing parseable pending
    ],
)
def test_reviewer_reward(pending_answer, pending_correct, text, reward):
    view = DialogueView(problem=GSM, pending_text="...", pending_answer=pending_answer,
                        pending_correct=pending_correct)
    assert Reviewer().reward(text, view) == reward


def test_prompts_carry_the_dialogue():
    first = Proposer().messages(DialogueView(problem=GSM))
    assert first[0]["role"] == "system" and first[-1]["role"] == "user"
    assert GSM.question in first[-1]["content"] and "Final answer" in first[-1]["content"]
    later = DialogueView(problem=GSM, pending_text="Final answer: 13", pending_answer="13",
                         review_text="WRONG\n3*4 is 12")
    content = Proposer().messages(later)[-1]["content"]
    assert "Final answer: 13" in content and "3*4 is 12" in content
    review = Reviewer().messages(later)[-1]["content"]
    assert "Final answer: 13" in review and "RIGHT" in review and "WRONG" in review
    assert Proposer(system_prompt="").messages(later)[0]["role"] == "user"  # no system message


def test_trl_signature_both_ways():
    fn = Proposer().as_reward_function()
    assert fn.__name__ == "proposer_reward"
    scores = fn(prompts=["p", "p", "p"], completions=["Final answer: 12", [{"role": "assistant",
                "content": "Final answer: 11"}], "x"], gold=["12", "11", None])
    assert scores == [1.0, 1.0, None]  # conversational completions too; a row without gold scores None
    rfn = Reviewer().as_reward_function()
    assert rfn(prompts=["p"], completions=["RIGHT\nok"], answer=["12"], pending_answer=["12"]) == [1.0]

    def shorter_is_better(prompts, completions, **kwargs):  # a TRL reward brought into a role
        assert kwargs["gold"] == ["12"] * len(completions)
        return [0.5 if len(c) < 20 else None for c in completions]

    role = Proposer(extra_rewards=[shorter_is_better], extra_reward_weights=[2.0], reward_scale=0.5)
    view = DialogueView(problem=GSM)
    assert role.score(["Final answer: 12", "A long derivation...\nFinal answer: 12"], view) == [1.5, 0.5]
    with pytest.raises(ValueError, match="extra_reward_weights"):
        Proposer(extra_rewards=[shorter_is_better], extra_reward_weights=[1.0, 2.0])


def test_subclassing_one_method_changes_the_reward():
    class ConciseProposer(Proposer):
        def reward(self, text, view):
            return super().reward(text, view) - 0.01 * len(text.split())

    view = DialogueView(problem=GSM)
    assert ConciseProposer().reward("Final answer: 12", view) == pytest.approx(1.0 - 0.03)
    assert ConciseProposer().name == "proposer"
