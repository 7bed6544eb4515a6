"""A fake engine: a tiny torch policy over a dozen words, for tests and examples that need no language model.

:class:`FakeEngine` builds a :class:`FakePolicy` that satisfies :class:`~tracer_pl.engines.base.Policy`: each role has
one learnable logit per word of :data:`VOCAB`, independent of the prompt, so a completion's log-probability is a
sum of table entries and GSPO visibly moves it. Digits decode as one number (``4``, ``2`` -> ``"42"``), the
verdict words stand apart (``RIGHT 4``), so proposals are read as numbers and reviews as verdicts. Select it with
``--model.engine tracer_pl.engines.fake.FakeEngine``; a whole ``fit`` on it takes seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from tracer_pl.core.agent import Completion, Messages, sample_counts
from tracer_pl.core.problem import Problem
from tracer_pl.core.roles import Role
from tracer_pl.engines.base import BackboneConfig, Engine, Policy
from tracer_pl.errors import ConfigError, DataError

VOCAB = [*"0123456789", "RIGHT", "WRONG", "<eos>"]
"""The fake policy's words; the last one ends a completion."""

EOS = len(VOCAB) - 1


def decode(ids: Sequence[int]) -> str:
    """Digits run together, words stand apart, the end token is dropped: ``[4, 2, 10]`` -> ``"42 RIGHT"``."""
    pieces = [VOCAB[i] if VOCAB[i].isdigit() else f" {VOCAB[i]} " for i in ids if i != EOS]
    return " ".join("".join(pieces).split())


class FakePolicy(torch.nn.Module):
    """One row of logits per role; sampling uses the global torch RNG, so a seeded run repeats exactly.

    Args:
        roles: The role names, one row each.
        max_new_tokens: Longest completion (the end token included).
        temperature: Sampling temperature (greedy decoding ignores it).
    """

    def __init__(self, roles: Sequence[str], max_new_tokens: int = 4, temperature: float = 1.0) -> None:
        super().__init__()
        self.roles = list(roles)
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.logits = torch.nn.ParameterDict({r: torch.nn.Parameter(torch.zeros(len(VOCAB))) for r in self.roles})
        self.optimizer_steps = {role: 0 for role in self.roles}

    def _row(self, role: str) -> torch.nn.Parameter:
        if role not in self.logits:
            raise ConfigError(f"no adapter for role {role!r}; this fake policy has {self.roles}")
        return self.logits[role]

    def generate(self, role: str, prompts: Sequence[Messages], num_samples: int | Sequence[int] = 1, *,
                 greedy: bool = False) -> list[list[Completion]]:
        counts = sample_counts(num_samples, len(prompts))
        probabilities = torch.softmax(self._row(role).detach() / max(self.temperature, 1e-6), dim=-1)
        return [[self._complete(prompt, probabilities, greedy) for _ in range(n)] for prompt, n in zip(prompts, counts)]

    def _complete(self, prompt: Messages, probabilities: torch.Tensor, greedy: bool) -> Completion:
        prompt_ids = torch.tensor(list(prompt[-1]["content"].encode()[-16:]) or [0])
        ids: list[int] = []
        while len(ids) < self.max_new_tokens and (not ids or ids[-1] != EOS):
            ids.append(int(probabilities.argmax()) if greedy else int(torch.multinomial(probabilities, 1)))
        return Completion(text=decode(ids), prompt_tokens=len(prompt_ids), completion_tokens=len(ids),
                          truncated=ids[-1] != EOS, prompt_ids=prompt_ids, completion_ids=torch.tensor(ids))

    def token_logprobs(self, role: str, completions: Sequence[Completion]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max((len(c.completion_ids) for c in completions), default=0)
        ids = torch.full((len(completions), width), EOS, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, completion in enumerate(completions):
            ids[row, : len(completion.completion_ids)] = completion.completion_ids
            mask[row, : len(completion.completion_ids)] = 1
        logp = torch.log_softmax(self._row(role), dim=-1)[ids]
        return logp * mask, mask

    def role_parameters(self, role: str) -> list[torch.nn.Parameter]:
        return [self._row(role)]

    def after_optimizer_step(self, role: str) -> None:
        """Count the steps, as a syncing engine would sync."""
        self.optimizer_steps[role] += 1

    def save_adapters(self, directory: str | Path) -> dict[str, Path]:
        folders = {role: Path(directory) / role for role in self.roles}
        for role, folder in folders.items():
            folder.mkdir(parents=True, exist_ok=True)
            torch.save(self.logits[role].detach().clone(), folder / "logits.pt")
        return folders

    def load_adapters(self, directory: str | Path) -> None:
        for role in self.roles:
            path = Path(directory) / role / "logits.pt"
            if not path.is_file():
                raise DataError(f"{path}: expected the saved logits of role {role!r}")
            with torch.no_grad():
                self.logits[role].copy_(torch.load(path, weights_only=True))

    def check_prompts(self, problems: Sequence[Problem], roles: Sequence[Role]) -> None:
        """Every prompt fits: the fake policy ignores its prompts."""

    def check_adapter_keys(self, saved: set[str]) -> None:
        """Refuse a checkpoint whose role rows are not this policy's."""
        expected = {f"logits.{role}" for role in self.roles}
        if saved and saved != expected:
            raise ConfigError(f"the checkpoint holds the roles {sorted(k.split('.', 1)[1] for k in saved)}, this fake "
                              f"policy has {sorted(self.roles)}; use the roles it was trained on")

    def sampling_settings(self) -> dict[str, float | int]:
        return {"temperature": self.temperature}


class FakeEngine(Engine):
    """Builds a :class:`FakePolicy` with the run's ``max_new_tokens`` and ``temperature`` (not its model)."""

    def build(self, config: BackboneConfig, roles: Sequence[str]) -> Policy:
        return FakePolicy(roles, max_new_tokens=config.max_new_tokens, temperature=config.temperature)


__all__ = ["FakeEngine", "FakePolicy", "VOCAB", "decode"]
