"""Generation for the Hugging Face policy: chat prompts in, sampled or greedy completions with token ids out.

:func:`generate` is what :meth:`~tracer_pl.engines.hf.policy.HFPolicy.generate` runs: every prompt and sample of a
call go through one batched ``generate`` with left padding, the prompt's KV cache shared by its samples when
asked. The functions read the policy's model, tokenizer and generation settings.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import torch

from tracer_pl.core.agent import Completion, Messages, plain_text, sample_counts


class PolicyParts(Protocol):
    """What generation and scoring read of :class:`~tracer_pl.engines.hf.policy.HFPolicy`, its only implementer."""

    model: Any
    tokenizer: Any
    max_new_tokens: int
    temperature: float
    top_p: float | None
    top_k: int | None
    repetition_penalty: float | None
    share_prompt_cache: bool
    stop_token_ids: list[int]
    chat_template_kwargs: dict[str, Any]
    generation_weights: str

    @property
    def device(self) -> torch.device: ...

    def use(self, role: str) -> None: ...

    def generation_model(self, role: str) -> Any: ...


def render(policy: PolicyParts, prompt: Messages) -> str:
    """The prompt as text, through the tokenizer's chat template, ready for the assistant's turn.

    A :func:`~tracer_pl.core.agent.text_prompt` is not templated: it is the text itself, after the tokenizer's
    beginning-of-sequence token if the tokenizer adds one. The policy's ``chat_template_kwargs``
    (``--model.backbone.chat_template_kwargs``, e.g. Qwen3's ``enable_thinking``), when it has any, reach the
    template as variables. Every prompt the engines generate
    from, score or measure (:meth:`~tracer_pl.engines.hf.policy.HFPolicy.check_prompts`, the vLLM engine's
    requests) is rendered here.
    """
    text = plain_text(prompt)
    if text is not None:  # a plain-text prompt: as the tokenizer itself would encode it, special tokens included
        return (policy.tokenizer.bos_token or "") + text if _adds_bos(policy.tokenizer) else text
    template_kwargs = getattr(policy, "chat_template_kwargs", None) or {}
    return policy.tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False,
                                                **template_kwargs)


def _adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts its beginning-of-sequence token before a text it encodes."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == bos


def generate(policy: PolicyParts,
    role: str,
    prompts: Sequence[Messages],
    num_samples: int | Sequence[int] = 1,
    *,
    greedy: bool = False,
) -> list[list[Completion]]:
    """Return ``num_samples[i]`` completions for ``prompts[i]`` under ``role``'s adapter, in one batch.

    Prompts are left-padded; sampling uses :attr:`temperature` and the filters of :meth:`sampling_settings`
    (the model's own ``generation_config`` wherever a filter is None, as the authors' code does by passing
    only the temperature). The model runs in eval mode without gradients and gets its previous mode back
    afterwards.

    Each :class:`~tracer_pl.core.agent.Completion` carries its ``prompt_ids`` and ``completion_ids``, 1-D CPU
    LongTensors without padding; ``completion_ids`` ends with the stop token unless ``truncated``.

    With :attr:`share_prompt_cache` and several samples of a prompt, the prompt is encoded once: one forward
    pass over the distinct prompts (all but their last token) fills a KV cache whose rows are then copied
    to the prompt's samples, and ``generate`` continues from it. The samples are the same as without
    sharing (up to float rounding); the prompt's compute is paid once instead of ``num_samples`` times.

    With :attr:`generation_weights` ``merged`` or ``merged_bf16`` the tokens are decoded by a copy of the base
    with the role's adapter merged in (:mod:`tracer_pl.engines.hf.merged`), and each completion reports the
    copy's log-probabilities of its tokens as ``sampling_logprobs`` (temperature 1, as scoring computes them),
    so GSPO logs how far they are from the training model's (``sampling_logp_mismatch``).

    Raises:
        ValueError: ``num_samples`` has the wrong length or a negative count.
    """
    counts = sample_counts(num_samples, len(prompts))
    live = [i for i, n in enumerate(counts) if n]
    if not live:
        return [[] for _ in prompts]
    model = policy.generation_model(role)
    report = policy.generation_weights != "adapters"
    shared = policy.share_prompt_cache and any(counts[i] > 1 for i in live)
    texts = [render(policy, prompts[i]) for i in live for _ in range(1 if shared else counts[i])]
    batch = policy.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(
        policy.device
    )
    ids, mask = batch["input_ids"], batch["attention_mask"]
    cache = {}
    with torch.no_grad(), _eval_mode(model):
        if shared:
            sizes = torch.tensor([counts[i] for i in live])
            rows = torch.repeat_interleave(torch.arange(len(live)), sizes).to(policy.device)
            if ids.shape[1] > 1:  # a one-token prompt has nothing to cache
                cache["past_key_values"] = _prompt_cache(model, ids, mask, rows)
            ids, mask = ids[rows], mask[rows]
        output = model.generate(input_ids=ids, attention_mask=mask, **cache, **_decoding(policy, greedy),
                                **({"return_dict_in_generate": True, "output_logits": True} if report else {}))
    sequences = output.sequences if report else output
    logprobs = _generated_logprobs(output.logits, sequences[:, ids.shape[1]:]) if report else None
    completions = _completions(policy, ids, mask, sequences, logprobs)
    grouped, start = [], 0
    for n in counts:
        grouped.append(completions[start : start + n])
        start += n
    return grouped


def _prompt_cache(model: Any, ids: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor) -> Any:
    """KV cache of every prompt but its last token, with row ``rows[j]`` of the batch copied to row ``j``."""
    head, head_mask = ids[:, :-1], mask[:, :-1]
    positions = (head_mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=head, attention_mask=head_mask, position_ids=positions, use_cache=True,
                logits_to_keep=1)
    cache = out.past_key_values
    cache.batch_select_indices(rows)
    return cache


def _decoding(policy: PolicyParts, greedy: bool) -> dict:
    """``generate`` options: the set filters override the model's generation config, None ones keep it."""
    settings = {
        "max_new_tokens": policy.max_new_tokens,
        "use_cache": True,  # also under gradient checkpointing, which turns the cache off in training
        "pad_token_id": policy.tokenizer.pad_token_id,
        "eos_token_id": policy.stop_token_ids,
    }
    if policy.repetition_penalty is not None:
        settings["repetition_penalty"] = policy.repetition_penalty
    if greedy or policy.temperature == 0:
        return {**settings, "do_sample": False}
    filters = {"top_p": policy.top_p, "top_k": policy.top_k}
    return {**settings, "do_sample": True, "temperature": policy.temperature,
            **{name: value for name, value in filters.items() if value is not None}}


def _generated_logprobs(logits: Sequence[torch.Tensor], generated: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` log-probabilities (temperature 1, in fp32) of the generated tokens under the raw step logits."""
    steps = [torch.log_softmax(step.float(), dim=-1).gather(-1, generated[:, t : t + 1])
             for t, step in enumerate(logits)]
    return torch.cat(steps, dim=-1).cpu()


def _completions(policy: PolicyParts, input_ids: torch.Tensor, mask: torch.Tensor, output: torch.Tensor,
                 logprobs: torch.Tensor | None = None) -> list[Completion]:
    generated = output[:, input_ids.shape[1] :].cpu()
    stops = torch.isin(generated, torch.tensor(policy.stop_token_ids))
    completions = []
    for row in range(len(generated)):
        ends = stops[row].nonzero()
        length = int(ends[0]) + 1 if len(ends) else generated.shape[1]
        completion_ids = generated[row, :length].clone()
        prompt_ids = input_ids[row][mask[row].bool()].cpu()
        completions.append(
            Completion(
                text=policy.tokenizer.decode(completion_ids, skip_special_tokens=True),
                prompt_tokens=len(prompt_ids),
                completion_tokens=length,
                truncated=not len(ends),
                prompt_ids=prompt_ids,
                completion_ids=completion_ids,
                sampling_logprobs=None if logprobs is None else logprobs[row, :length].clone(),
            )
        )
    return completions


@contextlib.contextmanager


def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(training)
