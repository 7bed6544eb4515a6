"""Evaluating trained adapters and controllers from Python, with the files ``tracer-pl test`` writes.

:func:`evaluate` runs Lightning's test (or validation) loop of a :class:`~tracer_pl.module.TracerModule` on a data
module and writes ``<log_dir>/<stage>_metrics.json`` with :func:`write_metrics`, the same function the command
line uses, next to the per-problem ``<stage>_records_<dataset>.jsonl`` the module writes. ``tracer-pl report``
reads both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import lightning as L

if TYPE_CHECKING:
    from tracer_pl.module import TracerModule

Stage = Literal["test", "val"]


def stage_metrics(trainer: L.Trainer, stage: Stage) -> dict[str, float]:
    """The ``<stage>/...`` metrics the last test or validation run logged, as floats."""
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(f"{stage}/")}


def write_metrics(trainer: L.Trainer, stage: Stage) -> Path:
    """Write :func:`stage_metrics` to ``<log_dir>/<stage>_metrics.json`` (sorted keys); return its path."""
    directory = Path(trainer.log_dir or trainer.default_root_dir or ".")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{stage}_metrics.json"
    path.write_text(json.dumps(stage_metrics(trainer, stage), indent=2, sort_keys=True) + "\n")
    return path


def evaluate(module: TracerModule, datamodule: L.LightningDataModule, *, trainer: L.Trainer | None = None,
             stage: Stage = "test", ckpt_path: str | None = None) -> dict[str, float]:
    """Evaluate ``module`` on ``datamodule``'s test (or validation) sets and write the metrics file.

    Args:
        module: The module to evaluate, as configured (its ``evaluation`` settings choose TRACER or a baseline).
        datamodule: Where the problems come from.
        trainer: The trainer to run with; by default one CPU/GPU device, no logger, results under ``runs/evaluate``.
        stage: ``test`` or ``val``.
        ckpt_path: A checkpoint to load first (trained adapters, controllers).

    Returns:
        The ``<stage>/<dataset>/<metric>`` values also written to ``<log_dir>/<stage>_metrics.json``.
    """
    trainer = trainer or L.Trainer(devices=1, logger=False, enable_checkpointing=False,
                                   enable_model_summary=False, default_root_dir="runs/evaluate")
    run = trainer.test if stage == "test" else trainer.validate
    run(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    write_metrics(trainer, stage)
    return stage_metrics(trainer, stage)


__all__ = ["evaluate", "stage_metrics", "write_metrics"]
