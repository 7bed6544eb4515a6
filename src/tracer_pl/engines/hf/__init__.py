"""The Hugging Face engine: ``transformers`` and ``peft`` behind the :class:`~tracer_pl.engines.base.Policy` seam.

:class:`HFEngine` is the default engine; :class:`~tracer_pl.engines.hf.policy.HFPolicy` (imported on first use,
so this package stays light) is the policy it builds.
"""

from tracer_pl.engines.hf.engine import HFEngine

__all__ = ["HFEngine"]
