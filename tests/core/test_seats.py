"""Seats beyond TRACER's two: the schedule, a third seat's controller, values and GSPO step, and its errors."""

import pytest
import torch

from tests.helpers.problems import A5, A7, A42, P42, ProblemList
from tests.helpers.scripted import ScriptedAgent, ScriptedProposerController, ScriptedReviewerController
from tests.helpers.training import fit
from tracer_pl.core.controllers import ControllerConfig, ProposerController, ReviewerController, time_bucket
from tracer_pl.core.dialogue import DialogueConfig, run_dialogues
from tracer_pl.core.gspo import GSPOConfig
from tracer_pl.core.roles import DialogueView, Proposer, Reviewer
from tracer_pl.core.seats import Seat, turn_order
from tracer_pl.engines.fake import FakeEngine
from tracer_pl.errors import ConfigError
from tracer_pl.examples import Verifier
from tracer_pl.training.module import BackboneConfig, TracerModule

THREE = ["proposer", "reviewer", "verifier", "proposer", "reviewer", "verifier", "proposer"]


def seats(*names_and_proposes):
    return [Seat(Proposer() if proposes else _named(Reviewer, name)(), None) for name, proposes in names_and_proposes]


def _named(base, name):
    return type(f"{name.title()}Role", (base,), {"name": name})


def test_the_default_schedule_is_tracers_alternation_with_the_same_time_buckets():
    for rounds in range(1, 10):
        order = turn_order(seats(("proposer", True), ("reviewer", False)), None, rounds)
        assert [s.name for s in order] == ["proposer" if r % 2 else "reviewer" for r in range(1, rounds + 1)]
        proposal_rounds = {r for r, s in enumerate(order, start=1) if s.proposes}
        for r in range(1, rounds + 1):
            assert time_bucket(r, rounds, proposal_rounds) == time_bucket(r, rounds)


def test_time_buckets_follow_the_schedules_proposal_rounds():
    proposal_rounds = {1, 4, 7}  # THREE
    assert [time_bucket(r, 7, proposal_rounds) for r in range(1, 8)] == [
        "not_last", "not_last", "not_last", "not_last", "last", "last", "last"]


@pytest.mark.parametrize(("schedule", "rounds", "message"), [
    (["proposer", "critic", "proposer"], 3, "names ['critic'], which are no seat"),
    (["proposer", "reviewer", "proposer"], 5, "has 3 rounds but rounds is 5"),
    (["reviewer", "proposer", "verifier"], 3, "round 1 must be a proposing seat's"),
    (["proposer", "reviewer", "proposer"], 3, "gives no round to the seats ['verifier']"),
    (None, 5, "3 seats need a schedule"),
])
def test_schedule_errors_name_the_problem(schedule, rounds, message):
    three = seats(("proposer", True), ("reviewer", False), ("verifier", False))
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        turn_order(three, schedule, rounds)
    with pytest.raises(ValueError, match="distinct role names"):
        turn_order(seats(("proposer", True), ("reviewer", False), ("reviewer", False)), THREE[:3], 3)


def test_verifier_reward_confirms_for_less_than_it_catches():
    verifier = Verifier(confirm_reward=0.25)
    right = DialogueView(problem=P42, pending_text=A42, pending_answer="42", pending_correct=True)
    wrong = DialogueView(problem=P42, pending_text=A7, pending_answer="7", pending_correct=False)
    assert verifier.reward("RIGHT\n42", right) == 0.25  # a confirmation
    assert verifier.reward("WRONG\n41", right) == -1.0  # a false alarm
    assert verifier.reward("WRONG\n42", wrong) == 1.0  # a catch
    assert verifier.reward("RIGHT\n7", wrong) == -1.0  # a miss
    assert verifier.reward("hmm", wrong) == 0.0
    assert verifier.speaking_value("RIGHT\n42", right) == 0.25  # the controller is valued by the same reward
    with pytest.raises(ValueError, match="confirm_reward"):
        Verifier(confirm_reward=2)


def test_a_third_seat_speaks_in_its_rounds_moves_the_vote_and_learns_from_its_own_values():
    agent = ScriptedAgent(proposer=[A7, A42, A5], reviewer=["RIGHT\nx", "RIGHT\nok"],
                          verifier=["WRONG\nI get 42", "RIGHT\n42"])
    pc, rc = ScriptedProposerController([1, 0]), ScriptedReviewerController([1, 0])
    vc = ScriptedReviewerController([1, 1])
    vc.name = "verifier"
    result = run_dialogues(
        [P42],
        agent,
        [Seat(Proposer(), pc), Seat(Reviewer(), rc), *[Seat(Verifier(confirm_reward=0.5), vc)]],
        config=DialogueConfig(rounds=7, schedule=THREE),
        training=True,
    )
    (record,) = result.records
    assert [t.role for t in record.turns] == THREE
    assert [t.action for t in record.turns] == ["refresh", "speak", "speak", "refresh", "skip", "speak", "keep"]
    # round 2: RIGHT on the wrong 7 (vote +1, reward -1); round 3: the verifier's WRONG catches it (vote back to 0)
    assert rc.updates[0] == (("+0", "not_last"), (-1.0, -1.0))
    assert vc.updates[0] == (("+1", "not_last"), (-1.0, 1.0))
    # round 4 sees both verdicts (+1 - 1 = 0) and refreshes to the right 42, which resets the vote
    assert pc.updates[0] == (("+0", "not_last"), (-1.0, 1.0))
    # round 5: the reviewer skips, its counterfactual RIGHT would have been right (+1), as is staying silent
    assert rc.updates[1] == (("+0", "last"), (1.0, 1.0))
    # round 6: the verifier confirms the right answer: 0.5, not the reviewer's 1
    assert vc.updates[1] == (("+0", "last"), (1.0, 0.5))
    # round 7: keep the right 42 (+1); the counterfactual refresh to 5 would be wrong (-1)
    assert pc.updates[1] == (("+1", "last"), (1.0, -1.0))
    assert record.final_answer == "42" and record.correct and record.vote == 1
    verifier_prompts = [c["prompts"][0][-1]["content"] for c in agent.calls if c["role"] == "verifier"]
    assert len(verifier_prompts) == 2 and all("Solve the problem again yourself" in p for p in verifier_prompts)
    assert agent.exhausted()


def test_controllers_are_built_per_seat_named_after_their_roles():
    config = ControllerConfig(seed=10, reviewer="always_skip", seats={"verifier": "frozen", "judge": "always_speak"})
    built = config.build([("proposer", True), ("reviewer", False), ("verifier", False), ("judge", False)])
    assert [c.name for c in built] == ["proposer", "reviewer", "verifier", "judge"]
    assert [type(c) for c in built] == [ProposerController, ReviewerController, ReviewerController, ReviewerController]
    assert [c.learns for c in built] == [True, False, False, False]
    assert built[1].fixed_action == "skip" and built[2].frozen and built[3].fixed_action == "speak"
    expected = [torch.Generator().manual_seed(10 + i).get_state() for i in range(4)]  # seat i: seed + i
    assert all(torch.equal(c.generator.get_state(), e) for c, e in zip(built, expected))
    with pytest.raises(ValueError, match="'always_refresh' is not one of its actions"):
        ControllerConfig(seats={"verifier": "always_refresh"}).build([("p", True), ("r", False), ("verifier", False)])


def three_seat_settings(**overrides):
    return {
        "backbone": BackboneConfig(max_new_tokens=1),
        "engine": FakeEngine(),
        "extra_roles": [Verifier()],
        "dialogue": DialogueConfig(rounds=5, schedule=["proposer", "reviewer", "proposer", "verifier", "proposer"]),
        "gspo": GSPOConfig(group_size=4, lr=0.5),
        **overrides,
    }


def three_seats(**overrides):
    return TracerModule(**three_seat_settings(**overrides))


@pytest.mark.e2e
def test_a_third_seat_gets_its_adapter_controller_optimizer_and_gspo_steps(tmp_path, sum_problems):
    module, _ = fit(tmp_path, ProblemList(sum_problems), batches=4, seed=5, **three_seat_settings())
    policy = module.policy
    assert policy.roles == module.trained_roles == ["proposer", "reviewer", "verifier"]
    assert len(module.optimizers()) == 3
    assert module.hparams["extra_roles"]["verifier"]["class_path"].endswith("Verifier")  # with its init arguments
    assert [c.name for c in module.controllers] == ["proposer", "reviewer", "verifier"]
    assert module.controllers[2].matcher.states()  # the verifier decided and was updated
    assert policy.optimizer_steps["verifier"] > 0 and policy.logits["verifier"].detach().abs().sum() > 0
    assert sorted(module.exported_adapters) == ["proposer", "reviewer", "verifier"]
    saved = torch.load(module.exported_adapters["verifier"] / "logits.pt")
    assert torch.equal(saved, policy.logits["verifier"].detach())


def test_third_seat_configuration_errors_name_the_flag():
    with pytest.raises(ConfigError, match="--model.dialogue.schedule: 3 seats need a schedule"):
        three_seats(dialogue=DialogueConfig())
    with pytest.raises(ConfigError, match="--model.reviewer/--model.extra_roles: every role needs a name of its own"):
        three_seats(extra_roles=[Reviewer()])
    with pytest.raises(ConfigError, match=r"--model.controllers.seats names \['judge'\], which are no extra role"):
        three_seats(controllers=ControllerConfig(seats={"judge": "frozen"}))
    with pytest.raises(ConfigError, match="--model.controllers.seats: verifier controller: 'always_keep'"):
        three_seats(controllers=ControllerConfig(seats={"verifier": "always_keep"}))
