"""The released code's protocol through TracerModule: agent bundles and the one-problem-at-a-time order."""

import pytest
import torch

from tests.helpers.problems import ProblemList
from tests.helpers.training import fit
from tracer_pl.core.controllers import ControllerConfig
from tracer_pl.core.dialogue import DialogueConfig
from tracer_pl.core.gspo import GSPOConfig
from tracer_pl.engines.base import BackboneConfig
from tracer_pl.engines.fake import FakeEngine
from tracer_pl.errors import ConfigError
from tracer_pl.examples import Verifier
from tracer_pl.training.module import TracerModule

FOUR = DialogueConfig(rounds=7, num_agents=4)


def test_four_agent_bundles_get_a_seat_adapter_and_controller_each():
    module = TracerModule(dialogue=FOUR, engine=FakeEngine())
    names = ["agent0_proposer", "agent1_reviewer", "agent2_proposer", "agent3_reviewer"]
    assert [r.name for r in module.roles] == names == [c.name for c in module.controllers]
    assert module.trained_roles == names
    assert module.dialogue_config.schedule == names + names[:3]
    assert module.hparams["dialogue"]["schedule"] is None  # the saved config stays the user's
    assert [type(c).__name__ for c in module.controllers] == ["ProposerController", "ReviewerController"] * 2
    no_reviewer = TracerModule(dialogue=FOUR, engine=FakeEngine(), train_reviewer=False,
                               controllers=ControllerConfig(reviewer="always_skip"))
    assert no_reviewer.trained_roles == ["agent0_proposer", "agent2_proposer"]
    assert [c.fixed_action for c in no_reviewer.controllers] == [None, "skip", None, "skip"]


def test_bundles_refuse_extra_seats_and_schedules():
    with pytest.raises(ConfigError, match="--model.extra_roles"):
        TracerModule(dialogue=FOUR, extra_roles=[Verifier()], engine=FakeEngine())
    with pytest.raises(ConfigError, match="--model.dialogue.schedule"):
        TracerModule(dialogue=DialogueConfig(rounds=3, num_agents=3, schedule=["proposer", "reviewer", "proposer"]),
                     engine=FakeEngine())


def fake_fit(root, problems, batch_size, batches, **dialogue):
    module, _ = fit(root, ProblemList(problems, batch_size=batch_size), batches=batches, seed=5,
                    backbone=BackboneConfig(max_new_tokens=1, temperature=1.0), engine=FakeEngine(),
                    dialogue=DialogueConfig(rounds=3, **dialogue), gspo=GSPOConfig(group_size=4, lr=0.5))
    return module


def state(module):
    return ({role: module.policy.logits[role].detach().clone() for role in module.policy.roles},
            [c.matcher.state_dict() for c in module.controllers])


def same(a, b):
    return all(torch.equal(a[0][r], b[0][r]) for r in a[0]) and a[1] == b[1]


@pytest.mark.e2e
def test_one_at_a_time_plays_a_batch_as_consecutive_single_problem_steps(tmp_path, sum_problems):
    """Batches of 2 in the released order end exactly where batches of 1 end; lockstep batches of 2 do not."""
    one_by_one = state(fake_fit(tmp_path / "a", sum_problems[:4], 1, 4))
    in_turn = state(fake_fit(tmp_path / "b", sum_problems[:4], 2, 2, order="one_at_a_time"))
    lockstep = state(fake_fit(tmp_path / "c", sum_problems[:4], 2, 2))
    assert same(one_by_one, in_turn)
    assert not same(one_by_one, lockstep)


@pytest.mark.e2e
def test_four_agents_train_with_the_fake_engine(tmp_path, sum_problems):
    module, _ = fit(tmp_path, ProblemList(sum_problems[:4], batch_size=2), batches=2, seed=5,
                    backbone=BackboneConfig(max_new_tokens=1, temperature=1.0), engine=FakeEngine(),
                    dialogue=FOUR, gspo=GSPOConfig(group_size=4, lr=0.5))
    visited = {c.name: sum(c.matcher.visits(s) for s in c.matcher.states()) for c in module.controllers}
    # per problem: agent0 decides in round 5, agent1 in 2 and 6, agent2 in 3 and 7, agent3 in 4 (when pending)
    assert visited["agent0_proposer"] <= 4 and visited["agent1_reviewer"] == 8
    assert visited["agent3_reviewer"] == 4 and 0 < visited["agent2_proposer"] <= 8
