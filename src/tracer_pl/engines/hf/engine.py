"""The Hugging Face engine: ``transformers`` + ``peft``, one model that generates, scores and trains."""

from __future__ import annotations

from collections.abc import Sequence

from tracer_pl.engines.base import BackboneConfig, Engine, Policy


class HFEngine(Engine):
    """Hugging Face ``transformers`` + ``peft``: one model generates (``generate``), scores and trains.

    The default engine. It has no options of its own: everything it needs is in ``model.backbone``.
    """

    def build(self, config: BackboneConfig, roles: Sequence[str]) -> Policy:
        from tracer_pl.engines.hf.policy import HFPolicy

        return HFPolicy.from_config(config, roles)


__all__ = ["HFEngine"]
