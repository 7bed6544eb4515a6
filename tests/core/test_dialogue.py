import pytest
import torch

from tests.helpers.problems import A5, A7, A42, P42
from tests.helpers.scripted import (
    PROMPT_TOKENS,
    ScriptedAgent,
    ScriptedProposerController,
    ScriptedReviewerController,
    play,
)
from tracer_pl.core import dialogue as core_dialogue
from tracer_pl.core.controllers import ProposerController, ReviewerController
from tracer_pl.core.dialogue import Dialogue, DialogueConfig, run_dialogues
from tracer_pl.core.problem import Problem
from tracer_pl.core.roles import Proposer, Reviewer
from tracer_pl.core.seats import Seat

P5 = Problem(question="What is 2 plus 3?", gold="5", dataset="gsm8k", uid="p5")
A3 = "Final answer: 3"
NONE = "I am not sure."


def test_evaluation_five_rounds_correction():
    agent = ScriptedAgent(proposer=[A7, A42], reviewer=["WRONG\n7 is not 6*7", "RIGHT\nchecks out"])
    result, pc, rc = play([P42], agent, [1, 0], [1, 1], training=False)
    (record,) = result.records
    assert [t.action for t in record.turns] == ["refresh", "speak", "refresh", "speak", "keep"]
    assert record.turns[0].forced and not any(t.forced for t in record.turns[1:])
    assert rc.states == [("+0", "not_last"), ("+0", "last")]  # a new proposal resets the vote
    assert pc.states == [("-1", "not_last"), ("+1", "last")]
    assert record.final_answer == "42" and record.correct
    assert record.first_answer == "7" and record.first_correct is False  # a correction
    assert record.correct_after_round == [False, False, True, True, True]
    assert record.vote == 1
    assert pc.updates == [] and rc.updates == []  # evaluation never updates
    assert all(call["greedy"] for call in agent.calls)
    assert "WRONG" in agent.calls[2]["prompts"][0][-1]["content"]  # the proposer saw the review
    assert record.calls == 4
    assert record.tokens == 4 * PROMPT_TOKENS + sum(map(len, [A7, A42, "WRONG\n7 is not 6*7", "RIGHT\nchecks out"]))
    assert agent.exhausted()


def test_training_values_keep_skip_and_unparseable_refresh():
    agent = ScriptedAgent(proposer=[A7, A42, NONE], reviewer=["WRONG\nx", "RIGHT\ny"])
    result, pc, rc = play([P42], agent, [0, 1], [0, 1], training=True)
    (record,) = result.records
    t1, t2, t3, t4, t5 = record.turns
    # round 2, skip: counterfactual review WRONG about a wrong answer -> speak = +1; skip = -1 (pending wrong)
    assert t2.action == "skip" and t2.text is None and t2.counterfactual_text == "WRONG\nx"
    assert t2.values == {"skip": -1.0, "speak": 1.0}
    assert record.turns[1].calls == 1
    # round 3, keep: counterfactual proposal 42 would be right -> keep -1, refresh +1; nothing changes
    assert t3.action == "keep" and t3.counterfactual_text == A42 and t3.values == {"keep": -1.0, "refresh": 1.0}
    # round 4, speak RIGHT about a wrong answer: reviewer reward -1; vote +1
    assert t4.values == {"skip": -1.0, "speak": -1.0} and t4.reward == -1.0
    # round 5, refresh with an unparseable answer: the parseable pending answer stays
    assert t5.text == NONE and not t5.replaced_pending and t5.values == {"keep": -1.0, "refresh": -1.0}
    assert record.final_answer == "7" and record.vote == 1
    assert rc.updates == [(("+0", "not_last"), (-1.0, 1.0)), (("+0", "last"), (-1.0, -1.0))]
    assert pc.updates == [(("+0", "not_last"), (-1.0, 1.0)), (("+1", "last"), (-1.0, -1.0))]
    assert not any(call["greedy"] for call in agent.calls)
    assert agent.exhausted()


def test_training_groups_lockstep_and_learn_order():
    agent = ScriptedAgent(
        proposer=[A42, A7, A7, A7, A5, A5, A5, A5, A42, A3],  # 2x4 candidates, then 2 fresh
        reviewer=["RIGHT\na", "RIGHT\nb", "WRONG\nc", "??", "WRONG\n", "WRONG\n", "WRONG\n", "WRONG\n",
                  "RIGHT\nfine", "WRONG\nno"],
    )
    seen = []

    def learner(role):
        def learn(groups):
            seen.append((role, len(agent.calls), groups))
        return learn

    result, pc, rc = play([P42, P5], agent, [], [1, 1], training=True, rounds=2, group_size=4,
                          learn={"proposer": learner("proposer"), "reviewer": learner("reviewer")})
    assert [c["num_samples"] for c in agent.calls] == [[4, 4], [1, 1], [4, 4], [1, 1]]  # one call each
    assert [(role, calls_so_far) for role, calls_so_far, _ in seen] == [("proposer", 1), ("reviewer", 3)]
    g0, g1 = seen[0][2]
    assert g0.rewards.tolist() == [1.0, -1.0, -1.0, -1.0] and g0.problem_index == 0
    s3 = 3 ** 0.5
    assert g0.advantages.tolist() == pytest.approx([s3, -1 / s3, -1 / s3, -1 / s3], abs=1e-6)
    assert g1.rewards.tolist() == [1.0] * 4 and not g1.has_signal
    r0, r1 = seen[1][2]
    assert r0.rewards.tolist() == [1.0, 1.0, -1.0, 0.0]  # unparseable verdict scores 0
    assert r1.rewards.tolist() == [1.0] * 4 and r1.advantages is None  # pending 3 is wrong: WRONG is right
    assert len(result.groups) == 4
    rec0, rec1 = result.records
    assert rec0.turns[1].values == {"skip": 1.0, "speak": 1.0}
    assert rec1.turns[1].values == {"skip": -1.0, "speak": 1.0}
    assert rec0.vote == 1 and rec1.vote == -1
    assert rc.states == [("+0", "last"), ("+0", "last")]
    assert rec0.calls == 10 and rec1.calls == 10  # 4 + 1 per round each
    assert rec0.prompt_tokens == 10 * PROMPT_TOKENS
    assert agent.exhausted()


def test_invalid_pending_forces_a_refresh_without_controller_update_by_default():
    # the authors' protocol: an unreadable pending answer is always refreshed, and that forced refresh is not valued
    agent = ScriptedAgent(proposer=[NONE, A42], reviewer=["WRONG\nno answer"])
    result, pc, rc = play([P42], agent, [], [1], training=True, rounds=3)
    (record,) = result.records
    assert rc.states == [("invalid", "last")]  # the reviewer still decides on an unreadable pending text
    assert record.turns[1].reward == 0.0  # nothing parseable to judge
    assert record.turns[1].values == {"skip": -1.0, "speak": 0.0}
    turn = record.turns[2]
    assert turn.forced and turn.action == "refresh" and turn.values is None
    assert pc.states == [] and pc.updates == []  # the proposer controller was neither asked nor updated
    assert turn.counterfactual_text is None and record.calls == 3  # no counterfactual sample either
    assert record.pending_answer == "42" and record.first_answer == "42" and record.first_correct is True
    assert record.correct


def test_invalid_pending_forced_refresh_still_trains_the_proposer():
    agent = ScriptedAgent(proposer=[A42, A7, A7, A7, NONE, A42, A7, A42, A7, A42], reviewer=["WRONG\nx"])
    seen = []
    result, pc, rc = play([P42], agent, [], [0], training=True, rounds=3, group_size=4,
                          learn={"proposer": lambda groups: seen.append([(g.round, len(g.completions))
                                                                         for g in groups])})
    (record,) = result.records
    assert seen == [[(1, 4)], [(3, 4)]]  # GSPO on the candidates of both forced refreshes
    assert record.turns[2].forced and pc.updates == []
    assert record.final_answer == "42" and agent.exhausted()


def test_invalid_pending_decide_lets_the_controller_keep_and_values_it():
    agent = ScriptedAgent(proposer=[NONE, A42], reviewer=["WRONG\nno answer"])
    result, pc, rc = play([P42], agent, [1], [1], training=True, rounds=3, invalid_pending="decide")
    (record,) = result.records
    assert pc.states == [("invalid", "last")]
    assert record.turns[2].replaced_pending and record.pending_answer == "42"
    assert pc.updates == [(("invalid", "last"), (-1.0, 1.0))]  # keeping nothing readable is worth -1
    assert record.correct


def test_unparseable_review_changes_nothing():
    agent = ScriptedAgent(proposer=[A42], reviewer=["Hmm, hard to say.", "RIGHT\nok"])
    result, _, rc = play([P42], agent, [], [1], training=False, rounds=2)
    record = result.records[0]
    assert record.vote == 0 and record.review_text is None and record.turns[1].parsed is None


def test_without_counterfactual_values_are_importance_weighted():
    agent = ScriptedAgent(proposer=[A42], reviewer=[])
    result, _, rc = play([P42], agent, [], [0], training=True, rounds=2, counterfactual=False)
    # skip chosen with probability 1/2: value +1 / 0.5 = 2 for skip, 0 for speak; no counterfactual sample
    assert rc.updates == [(("+0", "last"), (2.0, 0.0))]
    assert len(agent.calls) == 1


def test_frozen_role_samples_no_candidates_and_frozen_controller_no_counterfactual():
    agent = ScriptedAgent(proposer=[A42], reviewer=["WRONG\nx"] * 5)
    pc = ProposerController()
    rc = ReviewerController(fixed_action="speak")
    result = run_dialogues(
        [P42],
        agent,
        [Seat(Proposer(), pc), Seat(Reviewer(), rc)],
        config=DialogueConfig(rounds=2),
        training=True,
        learn={"reviewer": lambda groups: None},
    )
    assert [(c["role"], c["num_samples"]) for c in agent.calls] == [
        ("proposer", [1]),
        ("reviewer", [4]),
        ("reviewer", [1]),
    ]
    assert result.records[0].turns[1].values is None  # a fixed protocol is not valued


def test_real_controllers_learn_from_counterfactuals():
    # The reviewer's speak is always right about a correct answer... and so is skip: equal values leave the
    # regret at zero; a wrong pending answer with WRONG reviews makes speaking strictly better.
    texts = {"proposer": [A7] * 3, "reviewer": ["WRONG\nno"] * 3}
    agent = ScriptedAgent(**texts)
    rc = ReviewerController(seed=1)
    run_dialogues(
        [P42, P42, P42],
        agent,
        [Seat(Proposer(), ProposerController()), Seat(Reviewer(), rc)],
        config=DialogueConfig(rounds=2),
        training=True,
    )
    state = ("+0", "last")
    assert rc.matcher.visits(state) == 3
    # each visit: values (-1, +1) against the decision-time strategy (1/2, 1/2): regret (-1, +1)
    assert rc.matcher.cumulative_regret(state).tolist() == [-3.0, 3.0]
    assert rc.matcher.strategy(state).tolist() == [0.0, 1.0]


def test_rounds_must_be_positive():
    with pytest.raises(ValueError, match="rounds"):
        play([P42], ScriptedAgent(), [], [], training=False, rounds=0)


def test_eval_generator_makes_sampling_reproducible():
    def run(seed):
        agent = ScriptedAgent(proposer=[A42] * 20, reviewer=["RIGHT\n"] * 20)
        rc = ReviewerController()
        rc.matcher.apply(("+0", "last"), torch.tensor([1.0, 1.0]), torch.tensor([0.5, 0.5]))
        result = run_dialogues(
            [P42] * 10,
            agent,
            [Seat(Proposer(), ProposerController()), Seat(Reviewer(), rc)],
            config=DialogueConfig(rounds=2),
            eval_generator=torch.Generator().manual_seed(seed),
        )
        return [r.turns[1].action for r in result.records]

    assert run(0) == run(0)
    assert set(run(0)) == {"skip", "speak"}


def test_learn_runs_every_round_even_without_speakers_and_rounds_are_announced():
    # under DDP every process must join every GSPO step, so a role's learn runs in each of its rounds
    agent = ScriptedAgent(proposer=[A42], reviewer=[])
    pc, rc = ProposerController(), ReviewerController(fixed_action="skip")
    seen, ended = [], []
    dialogue = Dialogue(
        [P42], agent, [Seat(Proposer(), pc), Seat(Reviewer(), rc)], config=DialogueConfig(rounds=2), training=True
    )
    core_dialogue.play(
        dialogue, {"reviewer": lambda groups: seen.append(list(groups))}, after_round=lambda: ended.append(len(seen))
    )
    assert seen == [[]] and ended == [0, 1]  # the reviewer's learn ran in round 2, after round 1 ended
    assert [c["role"] for c in agent.calls] == ["proposer"]  # no reviewer generation happened


def test_unparseable_refresh_is_valued_by_the_answer_it_leaves_pending():
    # pending 42 is correct; a refresh that cannot be read leaves it pending, so refreshing is worth +1, not -1
    agent = ScriptedAgent(proposer=[A42, NONE, NONE], reviewer=[])
    pc = ScriptedProposerController([1, 0])  # a real refresh in round 3, a counterfactual one in round 5
    result = run_dialogues(
        [P42],
        agent,
        [Seat(Proposer(), pc), Seat(Reviewer(), ReviewerController(fixed_action="skip"))],
        config=DialogueConfig(rounds=5),
        training=True,
    )
    assert pc.updates == [(("+0", "not_last"), (1.0, 1.0)), (("+0", "last"), (1.0, 1.0))]
    assert result.records[0].final_answer == "42"


class _HarshProposer(Proposer):
    """Rewards nothing: a GSPO-only change, by the table in tracer_pl.core.roles."""

    def reward(self, text, view):
        return -1.0


class _StubbornProposer(Proposer):
    def speaking_value(self, text, view):
        return -1.0  # never worth refreshing


class _AlwaysRewardedReviewer(Reviewer):
    def reward(self, text, view):
        return 0.5


@pytest.mark.parametrize(
    ("proposer", "reviewer", "proposer_values", "reviewer_values"),
    [
        (Proposer(), Reviewer(), (-1.0, 1.0), (-1.0, 1.0)),  # pending 7 is wrong; refresh 42 right; WRONG is right
        (_HarshProposer(), Reviewer(), (-1.0, 1.0), (-1.0, 1.0)),  # reward override: controller values unchanged
        (_StubbornProposer(), Reviewer(), (-1.0, -1.0), (-1.0, 1.0)),  # speaking_value override reaches them
        (Proposer(), _AlwaysRewardedReviewer(), (-1.0, 1.0), (-1.0, 0.5)),  # a reviewer's reward is its speak value
        (Proposer(reward_scale=3.0), Reviewer(reward_scale=3.0), (-1.0, 1.0), (-1.0, 1.0)),  # scale: GSPO only
    ],
)
def test_what_each_role_override_reaches(proposer, reviewer, proposer_values, reviewer_values):
    agent = ScriptedAgent(proposer=[A7, A42], reviewer=["WRONG\nx"])
    pc, rc = ScriptedProposerController([0]), ScriptedReviewerController([0])
    run_dialogues(
        [P42], agent, [Seat(proposer, pc), Seat(reviewer, rc)], config=DialogueConfig(rounds=3), training=True
    )
    assert rc.updates == [(("+0", "last"), reviewer_values)]
    assert pc.updates == [(("+0", "last"), proposer_values)]
