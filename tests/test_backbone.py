import pytest
import torch
from peft import PeftModel

from tracer_pl.backbone import Backbone, infer_target_modules
from tracer_pl.errors import ConfigError
from tracer_pl.tiny import build_tiny_model

PROMPTS = [
    [{"role": "user", "content": "hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is two plus two?"}],
    [{"role": "user", "content": "a much longer prompt than the others, to force left padding"}],
]


@pytest.fixture(scope="module")
def backbone():
    return Backbone.from_pretrained("tiny-qwen2", max_new_tokens=6)


def set_lora_b(backbone, role, value):
    with torch.no_grad():
        for name, p in backbone.model.named_parameters():
            if f"lora_B.{role}." in name:
                p.fill_(value)


def test_generate_counts_and_token_accounting(backbone):
    out = backbone.generate("proposer", PROMPTS, [2, 0, 1])
    assert [len(g) for g in out] == [2, 0, 1]
    for prompt, group in zip(PROMPTS, out):
        expected_prompt = len(backbone.tokenizer(backbone.render(prompt), add_special_tokens=False)["input_ids"])
        for c in group:
            prompt_ids, completion_ids = c.payload
            assert c.prompt_tokens == expected_prompt == len(prompt_ids)
            assert c.completion_tokens == len(completion_ids) <= 6
            assert c.truncated == (backbone.tokenizer.eos_token_id not in completion_ids.tolist())
    assert backbone.generate("proposer", PROMPTS, 0) == [[], [], []]


def test_greedy_matches_a_manual_greedy_loop(backbone):
    (c,), = backbone.generate("reviewer", PROMPTS[1:2], 1, greedy=True)
    prompt_ids = c.payload[0].unsqueeze(0)
    ids = prompt_ids
    backbone.use("reviewer")
    with torch.no_grad():
        for _ in range(c.completion_tokens):
            next_id = backbone.model(input_ids=ids).logits[0, -1].argmax()
            ids = torch.cat([ids, next_id.view(1, 1)], dim=1)
    assert ids[0, prompt_ids.shape[1]:].tolist() == c.payload[1].tolist()
    (again,), = backbone.generate("reviewer", PROMPTS[1:2], 1, greedy=True)
    assert again.payload[1].tolist() == c.payload[1].tolist()


def test_sequence_logprobs_equal_unpadded_computation(backbone):
    set_lora_b(backbone, "proposer", 0.01)  # a non-trivial adapter
    completions = [c for g in backbone.generate("proposer", PROMPTS, 2) for c in g]
    logp, n = backbone.sequence_logprobs("proposer", completions)
    T = backbone.temperature
    for i, c in enumerate(completions):
        prompt_ids, completion_ids = c.payload
        ids = torch.cat([prompt_ids, completion_ids]).unsqueeze(0)
        with torch.no_grad():
            logits = backbone.model(input_ids=ids).logits[0].float() / T
        lp = torch.log_softmax(logits, -1)
        P = len(prompt_ids)
        direct = sum(lp[P - 1 + k, tok] for k, tok in enumerate(completion_ids.tolist()))
        assert float(logp[i]) == pytest.approx(float(direct), abs=1e-4)
        assert int(n[i]) == len(completion_ids)
    set_lora_b(backbone, "proposer", 0.0)


def test_gradients_reach_only_the_selected_role(backbone):
    backbone.model.zero_grad(set_to_none=True)
    completions = backbone.generate("reviewer", PROMPTS, 1)
    logp, _ = backbone.sequence_logprobs("reviewer", [g[0] for g in completions])
    logp.sum().backward()
    reviewer = backbone.role_parameters("reviewer")
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in reviewer)
    assert all(p.grad is None for p in backbone.role_parameters("proposer"))
    lora = {id(p) for p in reviewer + backbone.role_parameters("proposer")}
    assert all(p.grad is None for p in backbone.model.parameters() if id(p) not in lora)  # base frozen
    backbone.model.zero_grad(set_to_none=True)


def test_switching_roles_switches_adapters_without_touching_the_base(backbone):
    base_before = {n: p.clone() for n, p in backbone.model.named_parameters() if "lora_" not in n}
    ids = torch.tensor([[257, 104, 105, 258]])
    backbone.use("proposer")
    with torch.no_grad():
        a = backbone.model(input_ids=ids).logits
    set_lora_b(backbone, "reviewer", 0.05)
    backbone.use("reviewer")
    with torch.no_grad():
        b = backbone.model(input_ids=ids).logits
    assert not torch.allclose(a, b)
    backbone.use("proposer")
    with torch.no_grad():
        assert torch.equal(backbone.model(input_ids=ids).logits, a)
    for n, p in backbone.model.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, base_before[n])
    set_lora_b(backbone, "reviewer", 0.0)


def test_adapters_save_in_peft_format_and_reload(backbone, tmp_path):
    set_lora_b(backbone, "reviewer", 0.03)
    paths = backbone.save_adapters(tmp_path)
    assert sorted(paths) == ["proposer", "reviewer"]
    assert (paths["reviewer"] / "adapter_config.json").exists()
    ids = torch.tensor([[257, 104, 105, 258, 10]])
    backbone.use("reviewer")
    with torch.no_grad():
        expected = backbone.model(input_ids=ids).logits
    fresh_base, _ = build_tiny_model("qwen2")  # same seed: the same base weights
    reloaded = PeftModel.from_pretrained(fresh_base, paths["reviewer"])
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, expected, atol=1e-6)
    other = Backbone.from_pretrained("tiny-qwen2")
    other.load_adapters(tmp_path)
    other.use("reviewer")
    with torch.no_grad():
        assert torch.allclose(other.model(input_ids=ids).logits, expected, atol=1e-6)
    set_lora_b(backbone, "reviewer", 0.0)


def test_target_module_inference():
    qwen, _ = build_tiny_model("qwen2")
    llama, _ = build_tiny_model("llama")
    seven = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert infer_target_modules(qwen) == seven
    assert infer_target_modules(llama) == seven
    with pytest.raises(ConfigError, match="target_modules"):
        infer_target_modules(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    with pytest.raises(ConfigError, match="no adapter for role"):
        Backbone.from_pretrained("tiny-llama").use("verifier")


def test_4bit_nf4_on_cpu_trains_lora_only():
    bb = Backbone.from_pretrained("tiny-qwen2", precision="4bit", max_new_tokens=4, gradient_checkpointing=True)
    layer = bb.model.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    assert type(layer).__name__ == "Linear4bit" and layer.weight.quant_state.quant_type == "nf4"
    completions = [g[0] for g in bb.generate("proposer", PROMPTS, 1)]  # eval-mode generation first
    bb.model.train()
    logp, _ = bb.sequence_logprobs("proposer", completions)
    logp.sum().backward()
    grads = [p.grad for p in bb.role_parameters("proposer")]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    assert all(p.grad is None for n, p in bb.model.named_parameters() if "lora_" not in n)


def test_half_precision_on_cpu_falls_back_to_fp32():
    with pytest.warns(UserWarning, match="fp32"):
        bb = Backbone.from_pretrained("tiny-llama", precision="bf16")
    assert next(bb.model.parameters()).dtype == torch.float32
