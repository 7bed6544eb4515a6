"""The Lightning layer on the tiny model: exact resume, checkpoint contents, faults, configuration errors."""

import pytest
import torch

from tests.helpers.paths import GSM
from tests.helpers.roles_for_tests import ByteSumProposer
from tests.helpers.training import fit
from tracer_pl.core.dialogue import DialogueConfig
from tracer_pl.core.gspo import GSPOConfig
from tracer_pl.data.datamodule import ReasoningDataModule
from tracer_pl.errors import ConfigError
from tracer_pl.training.gspo_update import GSPOUpdate
from tracer_pl.training.module import BackboneConfig, TracerModule


def tiny_settings(**overrides):
    """The tiny model with a proposer whose reward varies on its random text, so GSPO steps happen."""
    settings = dict(backbone=BackboneConfig(name="tiny-qwen2", max_new_tokens=6, temperature=1.0),
                    proposer=ByteSumProposer(), dialogue=DialogueConfig(rounds=3),
                    gspo=GSPOConfig(group_size=3, lr=0.05, steps_per_group=2))
    settings.update(overrides)
    return settings


def make_module(**overrides):
    return TracerModule(**tiny_settings(**overrides))


def fit_tiny(root, batches, ckpt_path=None, keep_every=0, **overrides):
    """The tiny settings on GSM8K rows for ``batches`` batches of 2, checkpointed every 2 batches."""
    return fit(root, ReasoningDataModule(train=str(GSM), batch_size=2, seed=3), batches=batches, seed=7,
               ckpt_path=ckpt_path, checkpoint_every=2, keep_every=keep_every, **tiny_settings(**overrides))


def lora_state(module):
    return {k: v.clone() for k, v in module.policy.model.state_dict().items() if "lora_" in k}


@pytest.mark.e2e
def test_exact_resume_two_plus_two_equals_four(tmp_path):
    straight, straight_trainer = fit_tiny(tmp_path / "a", 4, keep_every=2)
    middle = tmp_path / "a" / "checkpoints" / "step-000002.ckpt"  # written after batch 2, as before a crash
    resumed, resumed_trainer = fit_tiny(tmp_path / "c", 4, ckpt_path=middle)
    # controllers: regret tables, strategy sums, visits and RNG
    for a, b in zip(straight.controllers, resumed.controllers):
        assert a.matcher.state_dict() == b.matcher.state_dict()
        assert a.matcher.states(), "the controllers were updated"
        assert torch.equal(a.generator.get_state(), b.generator.get_state())
    # adapters: trained (they moved away from the initial zeros of LoRA B), and identical
    sa, sb = lora_state(straight), lora_state(resumed)
    assert any(v.abs().sum() > 0 for k, v in sa.items() if "lora_B" in k)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    # optimizer states
    for oa, ob in zip(straight_trainer.optimizers, resumed_trainer.optimizers):
        for (_, pa), (_, pb) in zip(oa.state_dict()["state"].items(), ob.state_dict()["state"].items()):
            assert torch.equal(pa["exp_avg"], pb["exp_avg"]) and torch.equal(pa["exp_avg_sq"], pb["exp_avg_sq"])
    # data position: both saw the same 8 problems
    assert straight_trainer.datamodule.state_dict()["consumed"] == 8
    assert resumed_trainer.datamodule.state_dict()["consumed"] == 8


@pytest.mark.e2e
def test_checkpoint_holds_adapters_controllers_and_position_not_the_base(tmp_path):
    module, _ = fit_tiny(tmp_path, 2)
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    keys = list(checkpoint["state_dict"])
    assert keys and all("lora_" in k for k in keys if k.startswith("backbone."))
    assert set(checkpoint["tracer"]["controllers"]) == {"proposer", "reviewer"}
    assert checkpoint["ReasoningDataModule"]["consumed"] == 4
    assert not list((tmp_path / "checkpoints").glob(".*.tmp"))  # atomic: no temporary left behind


@pytest.mark.e2e
def test_nonfinite_loss_skips_the_update(tmp_path, monkeypatch):
    import tracer_pl.training.gspo_update as gspo_update_lib

    nan = gspo_update_lib.PolicyLoss(torch.tensor(float("nan"), requires_grad=True), 0.0)
    monkeypatch.setattr(gspo_update_lib, "gspo_loss", lambda *a, **k: nan)
    module, trainer = fit_tiny(tmp_path, 2)
    assert all(float(v.abs().sum()) == 0 for k, v in lora_state(module).items() if "lora_B" in k)  # untouched
    assert trainer.callback_metrics["gspo/proposer/skipped_nonfinite"] > 0


@pytest.mark.e2e
def test_frozen_roles_and_fixed_controllers(tmp_path):
    from tracer_pl.core.controllers import ControllerConfig

    module, trainer = fit_tiny(tmp_path, 2, train_proposer=False, train_reviewer=False,
                          controllers=ControllerConfig(reviewer="always_skip"))
    assert all(float(v.abs().sum()) == 0 for k, v in lora_state(module).items() if "lora_B" in k)
    assert trainer.optimizers == []
    assert module.reviewer_controller.matcher.states() == []  # a fixed protocol never learns
    assert trainer.callback_metrics["controller/reviewer/p_speak"] == 0.0


@pytest.mark.parametrize(
    "config, fields, flag",
    [
        (GSPOConfig, dict(group_size=1), "--model.gspo.group_size"),  # a group of one has no advantage
        (DialogueConfig, dict(rounds=0), "--model.dialogue.rounds"),
        (GSPOConfig, dict(lr=-1.0), "--model.gspo.lr"),
        (GSPOConfig, dict(steps_per_group=0), "--model.gspo.steps_per_group"),
        (BackboneConfig, dict(max_new_tokens=0), "--model.backbone.max_new_tokens"),
    ],
)
def test_impossible_settings_are_rejected_where_they_are_declared(config, fields, flag):
    with pytest.raises(ConfigError, match=flag.replace(".", r"\.")):
        config(**fields)


def test_the_group_size_under_dialogue_is_read_into_gspo_for_one_release():
    with pytest.warns(FutureWarning, match=r"--model\.dialogue\.group_size moved to --model\.gspo\.group_size"):
        module = make_module(dialogue=DialogueConfig(rounds=3, group_size=3))
    assert module.gspo_config.group_size == 3
    assert module.dialogue_config.group_size is None
    assert module.hparams["gspo"]["group_size"] == 3


def _group(name, signal=True):
    from tracer_pl.core.agent import Completion
    from tracer_pl.core.dialogue import CandidateGroup

    completions = [Completion(text=f"{name}{i}", prompt_tokens=1, completion_tokens=1) for i in range(2)]
    return CandidateGroup(role="proposer", round=1, problem_index=0, prompt=[], completions=completions,
                          rewards=torch.tensor([1.0, -1.0]),
                          advantages=torch.tensor([1.0, -1.0]) if signal else None)


class _VersionedPolicy:
    """Log-probs that tell which policy version scored which candidate."""

    def __init__(self):
        self.version = 0

    def token_logprobs(self, role, completions):
        values = [[float(self.version) + 0.25 * int(c.text[-1])] for c in completions]  # exact in binary
        return torch.tensor(values), torch.ones(len(completions), 1)


@pytest.mark.parametrize(
    ("update_per", "expected"),
    [
        # one update per group with signal; the second is scored against the policy that sampled it (version 0)
        ("group", [(["a"], None), (["c"], [[0.0], [0.25]])]),
        ("round", [(["a", "c"], None)]),  # one update over every group with signal, on-policy
    ],
)
def test_gspo_updates_per_group_or_per_round(monkeypatch, update_per, expected):
    policy = _VersionedPolicy()
    gspo = GSPOUpdate(GSPOConfig(group_size=3, update_per=update_per), policy)
    updates = []

    def update(role, groups, old_logp=None):
        updates.append(([g.completions[0].text[0] for g in groups], None if old_logp is None else old_logp.tolist()))
        policy.version += 1  # the policy moves with every update

    monkeypatch.setattr(gspo, "update", update)
    gspo.step("proposer", [_group("a"), _group("b", signal=False), _group("c")])
    assert updates == expected


@pytest.mark.e2e
def test_per_group_is_the_default_and_counts_one_step_per_group(tmp_path, monkeypatch):
    assert GSPOConfig().update_per == "group"
    original = GSPOUpdate.step
    live_groups = []

    def recording(self, role, groups):
        if role == "proposer":
            live_groups.append(sum(g.has_signal for g in groups))
        return original(self, role, groups)

    monkeypatch.setattr(GSPOUpdate, "step", recording)
    for mode in ("group", "round"):
        live_groups.clear()
        settings = GSPOConfig(group_size=3, lr=0.05, steps_per_group=1, update_per=mode)
        _, trainer = fit_tiny(tmp_path / mode, 1, gspo=settings)
        steps = float(trainer.callback_metrics["gspo/proposer/steps"])
        expected = sum(live_groups) if mode == "group" else sum(n > 0 for n in live_groups)
        assert steps == expected, (mode, live_groups)
        if mode == "group":
            assert max(live_groups) == 2  # a round with two groups, so the two modes differ in this run


def test_regret_bound_terms_name_the_decisions_that_share_a_strategy():
    from tracer_pl.training.metrics import regret_bound_terms

    assert regret_bound_terms(8, DialogueConfig()) == {"controller/regret_bound_batch": 8.0}
    assert regret_bound_terms(8, DialogueConfig(counterfactual=False)) == {"controller/regret_unbounded": 1.0}


def test_effective_sampling_settings_are_recorded_with_the_hyperparameters():
    module = make_module(backbone=BackboneConfig(name="tiny-qwen2", max_new_tokens=6, temperature=0.7, top_p=0.9))
    module.configure_model()
    # top_p as set; top_k and repetition penalty unset here and in the tiny model's config: transformers' defaults
    assert module.hparams["sampling"] == {"temperature": 0.7, "top_p": 0.9, "top_k": 50, "repetition_penalty": 1.0}
