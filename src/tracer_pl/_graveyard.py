"""The module paths of tracer_pl 0.1 before its subpackages, kept importable for one release.

Saved ``config.yaml`` files and user code name classes by their old paths (``tracer_pl.module.TracerModule``,
``tracer_pl.callbacks.BatchCheckpoint``, ``tracer_pl.vllm_engine.VLLMEngine``). :func:`install` puts a finder on
``sys.meta_path`` that answers an old path with a stand-in module: each attribute read from it is the new module's
(a renamed class under its new name), with a ``FutureWarning`` naming the new path. Nothing is imported until an old
path is used.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from typing import Any

MOVED = {
    "answers": "grading.answers",
    "answer_text": "grading.text",
    "numbers": "grading.numbers",
    "problem": "core.problem",
    "agent": "core.agent",
    "regret": "core.regret",
    "controllers": "core.controllers",
    "gspo": "core.gspo",
    "roles": "core.roles",
    "seats": "core.seats",
    "dialogue": "core.dialogue",
    "engine": "engines.base",
    "fake_engine": "engines.fake",
    "vllm_engine": "engines.vllm",
    "backbone": "engines.hf.policy",
    "generation": "engines.hf.generation",
    "scoring": "engines.hf.scoring",
    "models": "engines.hf.models",
    "tiny": "engines.hf.tiny",
    "sources": "data.sources",
    "module": "training.module",
    "gspo_step": "training.gspo_update",
    "evaluation": "training.evaluation",
    "callbacks": "training.callbacks",
    "checkpoints": "training.checkpoints",
    "distributed": "training.distributed",
    "metrics": "training.metrics",
    "report": "reporting.report",
    "report_plots": "reporting.plots",
    "controller_log": "reporting.controller_log",
    "statistics": "reporting.statistics",
    "run_files": "reporting.run_files",
}
"""Old module name (under ``tracer_pl``) -> its new path."""

RENAMED = {
    "engine": {"HFEngine": "tracer_pl.engines.hf.HFEngine"},
    "backbone": {"Backbone": "tracer_pl.engines.hf.policy.HFPolicy"},
    "vllm_engine": {"VLLMBackbone": "tracer_pl.engines.vllm.VLLMPolicy"},
}
"""Names that moved to another module or changed, per old module: old name -> new dotted path."""


class _OldModule(types.ModuleType):
    """Stands in for an old module path: forwards every attribute to the new module, with a warning."""

    def __init__(self, old: str, new: str) -> None:
        super().__init__(f"tracer_pl.{old}")
        self._old, self._new = old, new

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        target = RENAMED.get(self._old, {}).get(name)
        if target is None:
            module, attribute = f"tracer_pl.{self._new}", name
        else:
            module, attribute = target.rsplit(".", 1)
        warnings.warn(f"tracer_pl.{self._old}.{name} moved to {module}.{attribute}; the old path works until the "
                      "next release", FutureWarning, stacklevel=2)
        return getattr(importlib.import_module(module), attribute)


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        package, _, name = fullname.partition(".")
        if package != "tracer_pl" or name not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        old = spec.name.partition(".")[2]
        return _OldModule(old, MOVED[old])

    def exec_module(self, module: types.ModuleType) -> None:
        """Nothing to run: the stand-in forwards attribute reads."""


def install() -> None:
    """Make the old module paths importable (once)."""
    if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.append(_Finder())
