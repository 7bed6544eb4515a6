"""The released code's protocol as settings, checked decision for decision against a model of its rules.

``released_dialogue`` below restates, in plain Python and independently of ``tracer_pl.core.dialogue``, how the
authors' released code plays one problem (its ``runtime.py``): agent ``(r - 1) mod N`` owns round ``r``; a
proposal round refreshes when no readable answer is pending, else the proposer controller decides; a refresh
always replaces the pending answer (an unreadable one leaves none) and resets the vote; keep and refresh are
valued by the answer each leaves pending, and a keep values refresh as keep; a review round is skipped without a
decision when nothing is pending, else the reviewer decides, speaking moves the vote and a skip is valued by one
counterfactual review. Random scripted dialogues are played by both, with the same texts and decisions.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

import pytest
import torch

from tests.helpers.scripted import ScriptedAgent
from tracer_pl.core.controllers import ProposerController, ReviewerController, StateFeatures
from tracer_pl.core.dialogue import DialogueConfig, run_dialogues
from tracer_pl.core.problem import Problem
from tracer_pl.core.roles import Proposer, Reviewer
from tracer_pl.core.seats import Seat, agent_bundles

GOLD = "42"
PROPOSALS = {"Final answer: 42": "42", "Final answer: 41": "41", "Let me think about it.": None}
REVIEWS = {"RIGHT\nThe sum checks out.": "right", "WRONG\nThe sum is off.": "wrong", "Hard to say.": None}
G = 2
RELEASED = {"keep_valuation": "as_keep", "unreadable_refresh": "replaces_pending"}


class SharedScript:
    """Scripted decisions drawn from one queue in the order the dialogue asks for them (one problem)."""

    def __init__(self, bits: deque[int]) -> None:
        self.bits = bits
        self.updates: list[tuple[tuple[str, ...], tuple[float, float]]] = []

    def act(self, state, *, training, protocol="sample", generator=None):
        return self.bits.popleft(), torch.tensor([0.5, 0.5], dtype=torch.float64)

    def update(self, state, values, strategy):
        self.updates.append((state, tuple(values)))


WHOLE_VOTE = StateFeatures(vote_clip=None)  # controllers.vote_clip: null, the released code's state


class ScriptedProposer(SharedScript, ProposerController):
    def __init__(self, name: str, bits: deque[int]) -> None:
        ProposerController.__init__(self, name, features=WHOLE_VOTE)
        SharedScript.__init__(self, bits)


class ScriptedReviewer(SharedScript, ReviewerController):
    def __init__(self, name: str, bits: deque[int]) -> None:
        ReviewerController.__init__(self, name, features=WHOLE_VOTE)
        SharedScript.__init__(self, bits)


@dataclass
class Round:
    seat: str
    action: str
    forced: bool
    state: tuple[str, str] | None
    values: tuple[float, float] | None
    correct_after: bool


@dataclass
class Played:
    rounds: list[Round] = field(default_factory=list)
    final_answer: str | None = None


def seat_name(round_index: int, agents: int) -> str:
    kind = "proposer" if round_index % 2 else "reviewer"
    return kind if agents == 2 else f"agent{(round_index - 1) % agents}_{kind}"


def released_dialogue(scripts: dict[str, list[str]], bits: list[int], rounds: int, agents: int) -> Played:
    """One training dialogue under the released code's rules (see the module docstring)."""
    texts = {seat: deque(script) for seat, script in scripts.items()}
    bits_left = deque(bits)
    pending_text, pending, vote = None, None, 0
    played = Played()

    def signed(answer: str | None) -> float:
        return 1.0 if answer == GOLD else -1.0

    def state(r: int) -> tuple[str, str]:
        bucket = ("none" if pending_text is None else "invalid") if pending is None else f"{vote:+d}"
        proposal_rounds_left = sum(1 for k in range(r, rounds + 1) if k % 2)
        return bucket, "last" if proposal_rounds_left <= 1 else "not_last"

    for r in range(1, rounds + 1):
        seat = seat_name(r, agents)
        s = state(r)
        if r % 2:  # a proposal round
            forced = pending is None
            refresh = forced or bits_left.popleft() == 1
            old = pending
            if refresh:
                for _ in range(G):  # the GSPO candidates
                    texts[seat].popleft()
                pending_text = texts[seat].popleft()
                pending, vote = PROPOSALS[pending_text], 0
            values = None if old is None else (signed(old), signed(pending))
            played.rounds.append(Round(seat, "refresh" if refresh else "keep", forced, None if forced else s, values,
                                       pending == GOLD))
            continue
        if pending_text is None:  # nothing to review: skipped, no decision
            played.rounds.append(Round(seat, "skip", True, None, None, pending == GOLD))
            continue
        speak = bits_left.popleft() == 1
        if speak:
            for _ in range(G):
                texts[seat].popleft()
        verdict = REVIEWS[texts[seat].popleft()]
        review_value = 0.0 if verdict is None or pending is None else (
            1.0 if (verdict == "right") == (pending == GOLD) else -1.0)
        if speak and verdict is not None:
            vote += 1 if verdict == "right" else -1
        played.rounds.append(Round(seat, "speak" if speak else "skip", False, s, (signed(pending), review_value),
                                   pending == GOLD))
    played.final_answer = pending
    return played


def tracer_pl_dialogue(scripts: dict[str, list[str]], bits: list[int], rounds: int, agents: int,
                       **settings) -> Played:
    """The same dialogue played by ``run_dialogues`` with scripted texts and decisions."""
    roles, schedule = agent_bundles(Proposer(), Reviewer(), agents, rounds)
    queue = deque(bits)
    seats = [Seat(role, (ScriptedProposer if role.proposes else ScriptedReviewer)(role.name, queue))
             for role in roles]
    config = DialogueConfig(rounds=rounds, schedule=schedule if agents > 2 else None, **settings)
    agent = ScriptedAgent(**{seat: list(script) for seat, script in scripts.items()})
    problem = Problem(question="What is 40 + 2?", gold=GOLD, dataset="gsm8k")
    result = run_dialogues([problem], agent, seats, config=config, training=True,
                           learn={role.name: lambda groups: None for role in roles}, group_size=G)
    record = result.records[0]
    played = Played(final_answer=record.final_answer)
    for turn, correct in zip(record.turns, record.correct_after_round):
        values = None if turn.values is None else tuple(turn.values.values())
        played.rounds.append(Round(turn.role, turn.action, turn.forced, turn.state, values, correct))
    return played


def random_case(rng: random.Random, rounds: int, agents: int) -> tuple[dict[str, list[str]], list[int]]:
    seats = {seat_name(r, agents) for r in range(1, rounds + 1)}
    scripts = {seat: [rng.choice(list(PROPOSALS if "proposer" in seat else REVIEWS)) for _ in range(40)]
               for seat in seats}
    return scripts, [rng.randint(0, 1) for _ in range(rounds)]


def differing(cases: int, rounds: int, agents: int, **settings) -> int:
    rng = random.Random(1234)
    count = 0
    for _ in range(cases):
        scripts, bits = random_case(rng, rounds, agents)
        ours = tracer_pl_dialogue(scripts, bits, rounds, agents, **settings)
        count += ours != released_dialogue(scripts, bits, rounds, agents)
    return count


@pytest.mark.parametrize(("rounds", "agents"), [(5, 2), (7, 2), (7, 4), (9, 3)])
def test_the_released_settings_make_every_decision_and_value_of_the_released_rules(rounds, agents):
    assert differing(400, rounds, agents, **RELEASED) == 0


def test_the_paper_defaults_differ_from_the_released_rules_by_both_rules_and_only_them():
    """Each of the two rules alone leaves differences; both together none (R = 5, N = 2)."""
    default = differing(400, 5, 2)
    only_keep = differing(400, 5, 2, keep_valuation="as_keep")
    only_unreadable = differing(400, 5, 2, unreadable_refresh="replaces_pending")
    assert default > only_keep > 0 and default > only_unreadable > 0
    assert differing(400, 5, 2, **RELEASED) == 0


def test_four_agents_over_seven_rounds_by_hand():
    """N = 4, R = 7: agents 0 and 2 propose, 1 and 3 review; each seat has its own controller and texts.

    Derived by hand: r1 agent0 proposes 41 (wrong); r2 agent1 says WRONG (+1, vote -1); r3 agent2 keeps (refresh
    valued as keep: -1, -1); r4 agent3 says RIGHT of 41 (-1, vote 0); r5 agent0 refreshes to 42 (keep -1,
    refresh +1); r6 agent1 skips (skip +1, counterfactual RIGHT +1); r7 agent2 keeps 42 (+1, +1).
    """
    wrong, right = "Final answer: 41", "Final answer: 42"
    scripts = {
        "agent0_proposer": ["x", "x", wrong, "x", "x", right],
        "agent1_reviewer": ["x", "x", "WRONG\nThe sum is off.", "RIGHT\nThe sum checks out."],
        "agent2_proposer": [],
        "agent3_reviewer": ["x", "x", "RIGHT\nThe sum checks out."],
    }
    bits = [1, 0, 1, 1, 0, 0]  # r2 speak, r3 keep, r4 speak, r5 refresh, r6 skip, r7 keep
    played = tracer_pl_dialogue(scripts, bits, 7, 4, **RELEASED)
    expected = [
        Round("agent0_proposer", "refresh", True, None, None, False),
        Round("agent1_reviewer", "speak", False, ("+0", "not_last"), (-1.0, 1.0), False),
        Round("agent2_proposer", "keep", False, ("-1", "not_last"), (-1.0, -1.0), False),
        Round("agent3_reviewer", "speak", False, ("-1", "not_last"), (-1.0, -1.0), False),
        Round("agent0_proposer", "refresh", False, ("+0", "not_last"), (-1.0, 1.0), True),
        Round("agent1_reviewer", "skip", False, ("+0", "last"), (1.0, 1.0), True),
        Round("agent2_proposer", "keep", False, ("+0", "last"), (1.0, 1.0), True),
    ]
    assert played.rounds == expected
    assert played.final_answer == "42"
    assert played == released_dialogue(scripts, bits, 7, 4)


def test_agent_bundles_name_and_order_the_seats():
    roles, schedule = agent_bundles(Proposer(), Reviewer(), 4, 7)
    assert [r.name for r in roles] == ["agent0_proposer", "agent1_reviewer", "agent2_proposer", "agent3_reviewer"]
    assert schedule == ["agent0_proposer", "agent1_reviewer", "agent2_proposer", "agent3_reviewer",
                        "agent0_proposer", "agent1_reviewer", "agent2_proposer"]
    assert [r.proposes for r in roles] == [True, False, True, False]
    roles3, schedule3 = agent_bundles(Proposer(), Reviewer(), 3, 5)  # odd N: agents take both roles
    assert schedule3 == ["agent0_proposer", "agent1_reviewer", "agent2_proposer", "agent0_reviewer",
                         "agent1_proposer"]
    assert len({id(r) for r in roles3}) == 5
    roles2, schedule2 = agent_bundles(Proposer(), Reviewer(), 2, 5)
    assert [r.name for r in roles2] == ["proposer", "reviewer"] and schedule2[:2] == ["proposer", "reviewer"]
