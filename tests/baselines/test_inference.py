import pytest

from tests.helpers.scripted import PROMPT_TOKENS, ScriptedAgent
from tracer_pl.baselines import budget_matched_samples, chain_of_thought, debate, majority_vote
from tracer_pl.core.problem import Problem
from tracer_pl.core.roles import Proposer
from tracer_pl.training.metrics import problem_metrics

P42 = Problem(question="What is 6 times 7?", gold="42", dataset="gsm8k")
P5 = Problem(question="What is 2 plus 3?", gold="5", dataset="gsm8k")
MATH = Problem(question="Half of one?", gold="\\frac{1}{2}", dataset="math500")


def test_chain_of_thought_is_one_greedy_call():
    agent = ScriptedAgent(proposer=["Final answer: 42", "Final answer: 6"])
    records = chain_of_thought([P42, P5], agent, Proposer())
    assert [c["num_samples"] for c in agent.calls] == [[1, 1]] and agent.calls[0]["greedy"]
    assert [r.correct for r in records] == [True, False]
    assert records[0].calls == 1 and records[0].tokens == PROMPT_TOKENS + len("Final answer: 42")


@pytest.mark.parametrize(
    "answers, expected, correct",
    [
        (["Final answer: 7", "Final answer: 42", "Final answer: 42"], "42", True),  # 2 of 3
        (["Final answer: 7", "Final answer: 42", "no idea"], "7", False),  # a tie goes to the first seen
        (["no", "nothing", "Final answer: 42"], "42", True),  # unparseable samples do not vote
        (["no", "nothing", "still no"], None, False),
    ],
)
def test_majority_vote(answers, expected, correct):
    records = majority_vote([P42], ScriptedAgent(proposer=answers), Proposer(), samples=3)
    assert records[0].final_answer == expected and records[0].correct is correct
    assert records[0].calls == 3


def test_majority_vote_groups_equivalent_answers():
    texts = ["\\boxed{0.5}", "\\boxed{\\frac{2}{3}}", "\\boxed{\\frac{1}{2}}"]
    record = majority_vote([MATH], ScriptedAgent(proposer=texts), Proposer(), samples=3)[0]
    assert record.final_answer == "0.5" and record.correct  # 0.5 and 1/2 vote together
    metrics = problem_metrics(record)
    assert metrics["first_parseable"] == 1 and metrics["preservation"] == 1  # the first sample was right


def test_debate_shows_other_agents_and_takes_the_last_majority():
    agent = ScriptedAgent(proposer=["Final answer: 7", "Final answer: 42", "Final answer: 8",  # round 1
                                    "Final answer: 42", "Final answer: 42", "Final answer: 8"])  # round 2
    record = debate([P42], agent, Proposer(), agents=3, rounds=2)[0]
    assert [c["num_samples"] for c in agent.calls] == [[1, 1, 1], [1, 1, 1]]
    round2_first_agent = agent.calls[1]["prompts"][0][-1]["content"]
    assert "Final answer: 42" in round2_first_agent and "Final answer: 8" in round2_first_agent
    assert "Solution from agent" in round2_first_agent
    assert record.final_answer == "42" and record.correct
    assert record.correct_after_round == [False, True]  # round 1: a three-way tie goes to the first, 7
    assert record.first_answer == "7" and problem_metrics(record)["correction"] == 1
    assert record.calls == 6


def test_budget_matched_samples():
    assert budget_matched_samples(1014, 135.5) == 7  # floor(7.48)
    assert budget_matched_samples(100, 400) == 1  # always at least one sample
    with pytest.raises(ValueError):
        budget_matched_samples(100, 0)
    with pytest.raises(ValueError):
        majority_vote([P42], ScriptedAgent(), Proposer(), samples=0)
