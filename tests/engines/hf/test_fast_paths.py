"""The speed settings of the Hugging Face engine: merged-adapter generation and bf16 autocast for scoring.

Each is checked against the unmerged fp32 policy it replaces: ``merged`` must decode the same tokens with the same
log-probabilities (up to fp32 rounding), ``merged_bf16`` and ``score_autocast: bf16`` must stay close while really
computing in bf16, and a merged copy must follow every change of the adapter it holds.
"""

import pytest
import torch

from tracer_pl.engines.base import BackboneConfig
from tracer_pl.engines.hf.policy import HFPolicy
from tracer_pl.engines.vllm import VLLMEngine
from tracer_pl.errors import ConfigError

PROMPTS = [[{"role": "user", "content": "What is 2 + 3?"}], [{"role": "user", "content": "Name a colour."}]]


def _policy(**options):
    policy = HFPolicy.from_pretrained("tiny-qwen2", max_new_tokens=10, device="cpu", **options)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # fresh LoRA B is zero: give every adapter a real, distinct update
        for role in policy.roles:
            for parameter in policy.role_parameters(role):
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return policy


def _unmerged(policy):
    """The same peft model, decoding with its adapters unmerged (the default)."""
    return HFPolicy(policy.model, policy.tokenizer, policy.roles, max_new_tokens=policy.max_new_tokens)


def _gap(policy, completions):
    """Largest |scored log-prob - reported sampling log-prob| over the completions' real tokens."""
    scored, mask = policy.token_logprobs("proposer", completions)
    reported = torch.zeros_like(scored)
    for row, completion in enumerate(completions):
        reported[row, : len(completion.sampling_logprobs)] = completion.sampling_logprobs
    return float(((scored.detach() - reported).abs() * mask).max())


def _flat(groups):
    return [completion for group in groups for completion in group]


def _ids(groups):
    return [completion.completion_ids.tolist() for completion in _flat(groups)]


def test_merged_generation_decodes_the_unmerged_policy_tokens_and_log_probs():
    policy = _policy(generation_weights="merged")
    merged = policy.generate("proposer", PROMPTS, 2, greedy=True)
    assert _ids(merged) == _ids(_unmerged(policy).generate("proposer", PROMPTS, 2, greedy=True))
    assert _gap(policy, _flat(merged)) < 1e-5


def test_merged_copy_follows_every_change_of_the_adapter_it_serves():
    policy = _policy(generation_weights="merged")
    policy.generate("proposer", PROMPTS, 1, greedy=True)  # the copy now holds the proposer's adapter
    policy.generate("reviewer", PROMPTS, 1, greedy=True)  # ... and now the reviewer's
    with torch.no_grad():  # an in-place write, as an optimizer step or a loaded checkpoint makes
        for parameter in policy.role_parameters("proposer"):
            parameter.mul_(3.0)
    merged = policy.generate("proposer", PROMPTS, 2, greedy=True)
    assert _ids(merged) == _ids(_unmerged(policy).generate("proposer", PROMPTS, 2, greedy=True))
    assert _gap(policy, _flat(merged)) < 1e-5  # a stale merge would be off by the 3x update


def test_a_stale_merge_would_be_visible(monkeypatch):
    """The check above can fail: with the version check switched off, the stale copy's log-probs are far off."""
    policy = _policy(generation_weights="merged")
    policy.generate("proposer", PROMPTS, 1, greedy=True)
    copy = policy._merged[0]
    monkeypatch.setattr(copy, "for_role", lambda role, parameters: copy.model)
    with torch.no_grad():
        for parameter in policy.role_parameters("proposer"):
            parameter.mul_(3.0)
    assert _gap(policy, _flat(policy.generate("proposer", PROMPTS, 2, greedy=True))) > 1e-3


def test_merged_bf16_samples_from_a_bf16_rounding_of_the_policy():
    policy = _policy(generation_weights="merged_bf16")
    completions = _flat(policy.generate("proposer", PROMPTS, 2))
    assert policy._merged[0].model.dtype == torch.bfloat16
    assert 1e-5 < _gap(policy, completions) < 0.1  # really bf16, and close to the fp32 policy
    assert all(not name.startswith("_merged") for name in policy.state_dict())  # checkpoints hold no copy


def test_merged_fp32_copy_shares_the_weights_no_adapter_touches():
    policy = _policy(generation_weights="merged")
    policy.generate("proposer", PROMPTS, 1, greedy=True)
    copy = policy._merged[0].model
    base = policy.model.get_base_model()
    assert copy.get_input_embeddings().weight.data_ptr() == base.get_input_embeddings().weight.data_ptr()
    adapted = copy.model.layers[0].self_attn.q_proj.weight
    assert adapted.data_ptr() != base.model.layers[0].self_attn.q_proj.base_layer.weight.data_ptr()


def test_bf16_autocast_scores_close_to_fp32_and_trains_the_adapter():
    plain, autocast = _policy(), _policy(score_autocast="bf16")
    completions = _flat(plain.generate("proposer", PROMPTS, 2))
    reference, mask = plain.token_logprobs("proposer", completions)
    scored, _ = autocast.token_logprobs("proposer", completions)
    gap = float(((reference - scored).abs() * mask).max())
    assert 1e-5 < gap < 0.1  # computed in bf16, not fp32
    assert scored.dtype == torch.float32  # the log-softmax stays in fp32
    scored.sum().backward()
    grads = [p.grad for p in autocast.role_parameters("proposer") if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in autocast.role_parameters("reviewer"))


@pytest.mark.parametrize("options, message", [
    ({"generation_weights": "merged", "precision": "4bit"}, "adapters with --model.backbone.precision 4bit"),
    ({"generation_weights": "bf16"}, "generation_weights must be adapters, merged or merged_bf16"),
    ({"score_autocast": "fp16"}, "score_autocast must be off or bf16"),
])
def test_impossible_speed_settings_are_refused_naming_the_flag(options, message):
    with pytest.raises(ConfigError, match=message):
        BackboneConfig(**options)


def test_vllm_refuses_merged_generation_before_loading():
    with pytest.raises(ConfigError, match="generation_weights merged_bf16 applies to the Hugging Face engine"):
        VLLMEngine().build(BackboneConfig(generation_weights="merged_bf16"), ["proposer", "reviewer"])
