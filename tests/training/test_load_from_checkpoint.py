"""``TracerModule.load_from_checkpoint``: the trained module back from its checkpoint alone."""

import pytest
import torch

from tests.helpers.problems import ProblemList
from tests.helpers.training import fit
from tracer_pl.core.dialogue import DialogueConfig
from tracer_pl.core.gspo import GSPOConfig
from tracer_pl.core.roles import Proposer
from tracer_pl.engines.base import BackboneConfig
from tracer_pl.engines.fake import FakeEngine
from tracer_pl.errors import CheckpointError
from tracer_pl.training.evaluation import EvaluationConfig
from tracer_pl.training.module import TracerModule
from tracer_pl.training.rebuild import module_settings


@pytest.mark.e2e
def test_a_checkpoint_gives_back_the_trained_module(tmp_path, sum_problems):
    trained, _ = fit(tmp_path, ProblemList(sum_problems), batches=4, seed=3, checkpoint_every=2,
                     backbone=BackboneConfig(max_new_tokens=1, temperature=1.0), engine=FakeEngine(),
                     proposer=Proposer(reward_scale=2.0), dialogue=DialogueConfig(rounds=3),
                     gspo=GSPOConfig(group_size=4, lr=0.5))
    loaded = TracerModule.load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert isinstance(loaded.engine, FakeEngine) and loaded.dialogue_config.rounds == 3
    assert loaded.proposer.reward_scale == 2.0 and loaded.gspo_config.lr == 0.5
    for role in trained.policy.roles:  # the trained adapters, not fresh ones
        assert torch.equal(loaded.policy.logits[role], trained.policy.logits[role])
        assert loaded.policy.logits[role].abs().sum() > 0
    for ours, theirs in zip(loaded.controllers, trained.controllers):
        assert ours.matcher.state_dict() == theirs.matcher.state_dict() and ours.matcher.states()
    cot = TracerModule.load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt",
                                            evaluation=EvaluationConfig(method="cot"))
    assert cot.evaluation.method == "cot"


def test_settings_recorded_by_older_checkpoints_and_engines_of_ones_own():
    old = {"backbone": {"name": "tiny-qwen2", "lora_r": 4}, "proposer": "Proposer", "reviewer": "Reviewer",
           "extra_roles": [], "engine": "FakeEngine"}
    settings = module_settings(old, "checkpoint_path x.ckpt")
    assert settings["backbone"].lora_r == 4 and type(settings["proposer"]).__name__ == "Proposer"
    with pytest.raises(CheckpointError, match="records its extra roles \\['Verifier'\\] by class name only"):
        module_settings({**old, "extra_roles": ["Verifier"]}, "checkpoint_path x.ckpt")
    with pytest.raises(CheckpointError, match="engine MyEngine, which cannot be rebuilt"):
        module_settings({**old, "engine": "MyEngine"}, "checkpoint_path x.ckpt")
    with pytest.raises(CheckpointError, match="names nowhere.Role, which cannot be imported"):
        module_settings({**old, "proposer": {"class_path": "nowhere.Role", "init_args": {}}}, "checkpoint_path x")


def test_a_default_role_records_what_the_same_role_given_explicitly_records():
    """The default roles are jsonargparse lazy instances until first used; their record must not differ."""
    default = TracerModule(engine=FakeEngine()).hparams
    explicit = TracerModule(engine=FakeEngine(), proposer=Proposer()).hparams
    assert default["proposer"] == explicit["proposer"]
    assert default["proposer"]["class_path"] == "tracer_pl.core.roles.Proposer"
    assert default["reviewer"]["init_args"]["reward_scale"] == 1.0
