"""TracerModule driven through the engine seam by the fake engine: training, the sync hook, exact resume."""

import json

import lightning as L
import pytest
import torch

from tests.helpers.problems import ProblemList
from tests.helpers.training import StepCounter, fit
from tracer_pl.core.dialogue import DialogueConfig
from tracer_pl.core.gspo import GSPOConfig
from tracer_pl.engines.base import Policy
from tracer_pl.engines.fake import EOS, VOCAB, FakeEngine, FakePolicy, decode
from tracer_pl.training.module import BackboneConfig, TracerModule


def test_decode_reads_digits_as_one_number_and_words_apart():
    assert decode([4, 2, EOS]) == "42"
    assert decode([VOCAB.index("RIGHT"), 4]) == "RIGHT 4"
    assert decode([1, VOCAB.index("WRONG"), 2, EOS]) == "1 WRONG 2"


def test_fake_policy_is_a_policy_and_scores_what_it_samples():
    policy = FakePolicy(["proposer", "reviewer"], max_new_tokens=3)
    assert isinstance(policy, Policy)
    with torch.no_grad():
        policy.logits["proposer"][7] = 5.0
    torch.manual_seed(0)
    (group,) = policy.generate("proposer", [[{"role": "user", "content": "q"}]], 4)
    token_logp, mask = policy.token_logprobs("proposer", group)
    table = torch.log_softmax(policy.logits["proposer"].detach(), dim=-1)
    for row, completion in enumerate(group):
        ids = completion.completion_ids.tolist()
        assert mask[row].sum() == len(ids) == completion.completion_tokens
        assert token_logp[row].sum().item() == pytest.approx(sum(table[i].item() for i in ids), abs=1e-6)


def fit_fake(root, problems, batches, ckpt_path=None):
    """The fake engine on ``problems``, checkpointed every 2 batches: ``(module, trainer, step counter)``.

    One-token answers: a candidate is right with probability 1/13, so most groups of 4 hold a right and a wrong one.
    """
    counter = StepCounter()
    module, trainer = fit(root, ProblemList(problems), batches=batches, seed=3, ckpt_path=ckpt_path,
                          callbacks=[counter], checkpoint_every=2, keep_every=2,
                          backbone=BackboneConfig(max_new_tokens=1, temperature=1.0), engine=FakeEngine(),
                          dialogue=DialogueConfig(rounds=3), gspo=GSPOConfig(group_size=4, lr=0.5))
    return module, trainer, counter


@pytest.mark.e2e
def test_fake_engine_trains_tracer_and_hears_every_optimizer_step(tmp_path, sum_problems):
    module, _, counter = fit_fake(tmp_path, sum_problems, 4)
    policy = module.policy
    assert isinstance(policy, FakePolicy) and module.hparams["engine"] == "FakeEngine"
    counted = counter.steps
    assert counted["proposer"] > 0 and counted["reviewer"] > 0  # both roles had groups with signal
    assert policy.optimizer_steps == counted  # the sync hook ran after every optimizer step, and only then
    for role in policy.roles:
        assert policy.logits[role].detach().abs().sum() > 0  # moved away from the uniform start


@pytest.mark.e2e
def test_fake_engine_resumes_exactly(tmp_path, sum_problems):
    straight, _, _ = fit_fake(tmp_path / "a", sum_problems, 4)
    resumed, _, _ = fit_fake(tmp_path / "b", sum_problems, 4,
                             ckpt_path=tmp_path / "a" / "checkpoints" / "step-000002.ckpt")
    for role in straight.policy.roles:
        assert torch.equal(straight.policy.logits[role], resumed.policy.logits[role]), role
    for a, b in zip(straight.controllers, resumed.controllers):
        assert a.matcher.state_dict() == b.matcher.state_dict() and a.matcher.states()


@pytest.mark.e2e
def test_evaluate_from_python_writes_what_the_cli_writes(tmp_path):
    from tracer_pl.data.datamodule import ReasoningDataModule

    data_file = tmp_path / "sums.jsonl"
    data_file.write_text("".join(json.dumps({"question": f"{i} + {4 - i}?", "answer": "so #### 4"}) + "\n"
                                 for i in range(5)))
    module = TracerModule(backbone=BackboneConfig(max_new_tokens=1), engine=FakeEngine())
    trainer = L.Trainer(accelerator="cpu", logger=False, default_root_dir=tmp_path / "eval", enable_progress_bar=False,
                        enable_model_summary=False)
    metrics = module.evaluate(ReasoningDataModule(test=str(data_file), eval_batch_size=2), trainer=trainer)
    written = json.loads((tmp_path / "eval" / "test_metrics.json").read_text())
    assert written == pytest.approx(metrics) and "test/sums/accuracy" in metrics
    records = [json.loads(line) for line in (tmp_path / "eval" / "test_records_sums.jsonl").read_text().splitlines()]
    assert len(records) == 5  # the accuracy is the mean of the records' outcomes
    assert metrics["test/sums/accuracy"] == pytest.approx(sum(r["correct"] for r in records) / 5)


@pytest.mark.e2e
def test_training_and_evaluation_play_every_round_through_play_round(tmp_path, sum_problems, monkeypatch):
    # the one round loop: the scripted dialogue tests drive play_round, and so must what trains and what evaluates
    from tracer_pl.core import dialogue as core_dialogue

    played, real = [], core_dialogue.play_round

    def spy(dialogue, round_index, seat, learn=None):
        played.append((dialogue.training, round_index, seat.role.name, learn is not None))
        return real(dialogue, round_index, seat, learn)

    monkeypatch.setattr(core_dialogue, "play_round", spy)
    module, trainer, _ = fit_fake(tmp_path, sum_problems, 1)
    order = [("proposer", True), ("reviewer", True), ("proposer", True)]  # both roles trained, rounds 1..3
    assert played == [(True, r, role, learns) for r, (role, learns) in enumerate(order, start=1)]
    played.clear()
    trainer.test(module, dataloaders=torch.utils.data.DataLoader(sum_problems[:2], batch_size=2, collate_fn=list))
    protocols = len(module.evaluation.protocols)
    assert played == [(False, r, role, False) for _ in range(protocols) for r, (role, _) in enumerate(order, 1)]
