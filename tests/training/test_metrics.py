import json

import pytest

from tests.helpers import scripted
from tests.helpers.scripted import ScriptedAgent
from tracer_pl.core.problem import Problem
from tracer_pl.training.metrics import mean_metrics, problem_metrics, record_json

P = Problem(question="What is 6 times 7?", gold="42", dataset="gsm8k", uid="p")
RIGHT, WRONG, NONE = "Final answer: 42", "Final answer: 7", "no idea"


def play(proposals, reviews, proposer_actions, reviewer_actions, rounds=3):
    agent = ScriptedAgent(proposer=list(proposals), reviewer=list(reviews))
    result, _, _ = scripted.play([P], agent, proposer_actions, reviewer_actions, rounds=rounds)
    return result.records[0]


@pytest.mark.parametrize(
    "proposals, proposer_actions, expected",
    [
        # wrong, then refreshed to right: a correction
        ([WRONG, RIGHT], [1], dict(accuracy=1, first_parseable=1, correction=1, preservation=0,
                                   accuracy_round1=0, accuracy_round2=0, accuracy_round3=1)),
        # right and kept: a preservation
        ([RIGHT], [0], dict(accuracy=1, first_parseable=1, correction=0, preservation=1, accuracy_round3=1)),
        # right, then refreshed to wrong: neither
        ([RIGHT, WRONG], [1], dict(accuracy=0, first_parseable=1, correction=0, preservation=0,
                                   accuracy_round1=1, accuracy_round3=0)),
        # nothing parseable at first, right later: first parseable answer is the right one
        ([NONE, RIGHT], [1], dict(accuracy=1, first_parseable=1, correction=0, preservation=1)),
        # never parseable
        ([NONE, NONE], [1], dict(accuracy=0, first_parseable=0, correction=0, preservation=0)),
    ],
)
def test_problem_metrics(proposals, proposer_actions, expected):
    record = play(proposals, ["Hmm."], proposer_actions, [1])
    metrics = problem_metrics(record)
    for key, value in expected.items():
        assert metrics[key] == value, key
    assert metrics["calls_per_problem"] == len(proposals) + 1


def test_mean_metrics_and_records():
    records = [play([WRONG, RIGHT], ["WRONG\nno"], [1], [1]), play([RIGHT], ["RIGHT\nyes"], [0], [1])]
    means = mean_metrics(records)
    assert means["accuracy"] == 1.0 and means["correction"] == 0.5 and means["preservation"] == 0.5
    assert means["accuracy_round1"] == 0.5
    row = json.loads(json.dumps(record_json(records[0])))  # JSON-ready
    assert row["gold"] == "42" and row["final_answer"] == "42" and row["first_answer"] == "7"
    assert [t["action"] for t in row["turns"]] == ["refresh", "speak", "refresh"]
    assert row["turns"][1]["text"] == "WRONG\nno" and row["turns"][2]["state"] == ["-1", "last"]
    assert mean_metrics([]) == {}
