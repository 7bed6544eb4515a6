"""Generation for the Hugging Face policy: chat prompts in, sampled or greedy completions with token ids out.

:class:`GenerationMixin` is the part of :class:`~tracer_pl.backbone.Backbone` that samples: every prompt and
sample of a call go through one batched ``generate`` with left padding, the prompt's KV cache shared by its
samples when asked.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from tracer_pl.agent import Completion, Messages, sample_counts


class GenerationMixin:
    """Sampling for a :class:`~tracer_pl.backbone.Backbone`.

    The class it is mixed into provides ``model``, ``tokenizer``, ``use``, ``device`` and the generation settings
    (``max_new_tokens``, ``temperature``, ``top_p``, ``top_k``, ``repetition_penalty``, ``share_prompt_cache``,
    ``stop_token_ids``).
    """

    def render(self, prompt: Messages) -> str:
        """The prompt as text, through the tokenizer's chat template, ready for the assistant's turn."""
        return self.tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)

    def generate(
        self,
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

        Each :class:`~tracer_pl.agent.Completion` carries its ``prompt_ids`` and ``completion_ids``, 1-D CPU
        LongTensors without padding; ``completion_ids`` ends with the stop token unless ``truncated``.

        With :attr:`share_prompt_cache` and several samples of a prompt, the prompt is encoded once: one forward
        pass over the distinct prompts (all but their last token) fills a KV cache whose rows are then copied
        to the prompt's samples, and ``generate`` continues from it. The samples are the same as without
        sharing (up to float rounding); the prompt's compute is paid once instead of ``num_samples`` times.

        Raises:
            ValueError: ``num_samples`` has the wrong length or a negative count.
        """
        counts = sample_counts(num_samples, len(prompts))
        live = [i for i, n in enumerate(counts) if n]
        if not live:
            return [[] for _ in prompts]
        self.use(role)
        shared = self.share_prompt_cache and any(counts[i] > 1 for i in live)
        texts = [self.render(prompts[i]) for i in live for _ in range(1 if shared else counts[i])]
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(
            self.device
        )
        ids, mask = batch["input_ids"], batch["attention_mask"]
        cache = {}
        with torch.no_grad(), _eval_mode(self.model):
            if shared:
                sizes = torch.tensor([counts[i] for i in live])
                rows = torch.repeat_interleave(torch.arange(len(live)), sizes).to(self.device)
                if ids.shape[1] > 1:  # a one-token prompt has nothing to cache
                    cache["past_key_values"] = self._prompt_cache(ids, mask, rows)
                ids, mask = ids[rows], mask[rows]
            output = self.model.generate(input_ids=ids, attention_mask=mask, **cache, **self._decoding(greedy))
        completions = self._completions(ids, mask, output)
        grouped, start = [], 0
        for n in counts:
            grouped.append(completions[start : start + n])
            start += n
        return grouped

    def _prompt_cache(self, ids: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor) -> Any:
        """KV cache of every prompt but its last token, with row ``rows[j]`` of the batch copied to row ``j``."""
        head, head_mask = ids[:, :-1], mask[:, :-1]
        positions = (head_mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=head, attention_mask=head_mask, position_ids=positions, use_cache=True,
                         logits_to_keep=1)
        cache = out.past_key_values
        cache.batch_select_indices(rows)
        return cache

    def sampling_settings(self) -> dict[str, float | int]:
        """The sampling settings in effect: the set ones, and the model's ``generation_config`` for the rest."""
        config = self.model.generation_config
        chosen = {"top_p": self.top_p, "top_k": self.top_k, "repetition_penalty": self.repetition_penalty}
        defaults = {"top_p": 1.0, "top_k": 50, "repetition_penalty": 1.0}  # transformers' own when nobody sets one
        settings: dict[str, float | int] = {"temperature": self.temperature}
        for name, value in chosen.items():
            if value is None:
                value = getattr(config, name, None)
            settings[name] = defaults[name] if value is None else value
        return settings

    def _decoding(self, greedy: bool) -> dict:
        """``generate`` options: the set filters override the model's generation config, None ones keep it."""
        settings = {
            "max_new_tokens": self.max_new_tokens,
            "use_cache": True,  # also under gradient checkpointing, which turns the cache off in training
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": self.stop_token_ids,
        }
        if self.repetition_penalty is not None:
            settings["repetition_penalty"] = self.repetition_penalty
        if greedy or self.temperature == 0:
            return {**settings, "do_sample": False}
        filters = {"top_p": self.top_p, "top_k": self.top_k}
        return {**settings, "do_sample": True, "temperature": self.temperature,
                **{name: value for name, value in filters.items() if value is not None}}

    def _completions(
        self, input_ids: torch.Tensor, mask: torch.Tensor, output: torch.Tensor
    ) -> list[Completion]:
        generated = output[:, input_ids.shape[1] :].cpu()
        stops = torch.isin(generated, torch.tensor(self.stop_token_ids))
        completions = []
        for row in range(len(generated)):
            ends = stops[row].nonzero()
            length = int(ends[0]) + 1 if len(ends) else generated.shape[1]
            completion_ids = generated[row, :length].clone()
            prompt_ids = input_ids[row][mask[row].bool()].cpu()
            completions.append(
                Completion(
                    text=self.tokenizer.decode(completion_ids, skip_special_tokens=True),
                    prompt_tokens=len(prompt_ids),
                    completion_tokens=length,
                    truncated=not len(ends),
                    prompt_ids=prompt_ids,
                    completion_ids=completion_ids,
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
