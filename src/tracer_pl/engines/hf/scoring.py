"""Scoring for the Hugging Face policy: per-token log-probabilities of completions under a role's adapter (GSPO).

Log-probabilities are those of the model's own distribution (temperature 1), as in the authors' code, even
though candidates are sampled at the training temperature: GSPO only needs the new and the old policy scored
the same way, and the ratio is then exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tracer_pl.core.agent import Completion
from tracer_pl.engines.hf.generation import PolicyParts


def token_logprobs(policy: PolicyParts, role: str, completions: Sequence[Completion]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probabilities of each completion under ``role``'s adapter, in one forward pass.

    Prompts are left-padded and completions right-padded, so every completion starts in the same column
    and only the completion columns go through the output head. Position ids count real tokens only, so
    padding changes nothing. The log-softmax is taken in fp32. With the policy's ``score_autocast`` ``bf16`` the
    forward pass (and the backward pass through it) runs under ``torch.autocast`` in bf16. The model's
    train/eval mode is left as the caller set it.

    Returns:
        ``(token_logp, mask)`` of shape ``[N, C]`` (C: the longest completion): ``token_logp`` is 0 on
        padding; ``mask`` (long) is 1 on real completion tokens.
    """
    if not completions:
        empty = torch.zeros(0, 0, device=policy.device)
        return empty, empty.long()
    ids, mask, width = _pack(policy, completions)
    policy.use(role)
    autocast = getattr(policy, "score_autocast", "off") == "bf16"
    # logits at columns P-1 .. P+C-2 predict the completion tokens at columns P .. P+C-1
    with torch.autocast(policy.device.type, dtype=torch.bfloat16, enabled=autocast):
        logits = policy.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
            logits_to_keep=width + 1,
            use_cache=False,
        ).logits[:, :-1]
    logp = torch.log_softmax(logits.float(), dim=-1)
    targets = ids[:, -width:]
    completion_mask = mask[:, -width:]
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1) * completion_mask, completion_mask


def _pack(policy: PolicyParts, completions: Sequence[Completion]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Token ids and attention mask ``[N, P + C]``: prompts end at column P, completions start there."""
    pairs = [_token_ids(c, i) for i, c in enumerate(completions)]
    prompt_width = max(len(p) for p, _ in pairs)
    width = max(len(a) for _, a in pairs)
    ids = torch.full((len(pairs), prompt_width + width), policy.tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, (prompt, answer) in enumerate(pairs):
        start, end = prompt_width - len(prompt), prompt_width + len(answer)
        ids[row, start:end] = torch.cat([prompt, answer])
        mask[row, start:end] = 1
    return ids.to(policy.device), mask.to(policy.device), width


def _token_ids(completion: Completion, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = (completion.prompt_ids, completion.completion_ids)
    if not all(isinstance(t, torch.Tensor) and t.dim() == 1 for t in ids):
        raise ValueError(
            f"completions[{index}] needs prompt_ids and completion_ids, two 1-D tensors as made by "
            f"HFPolicy.generate; got {type(ids[0]).__name__} and {type(ids[1]).__name__}"
        )
    if len(ids[1]) == 0:
        raise ValueError(f"completions[{index}] has no completion tokens; there is nothing to score")
    return ids[0].long().cpu(), ids[1].long().cpu()
