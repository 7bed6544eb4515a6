"""Evaluating trained adapters and controllers from Python, with the files ``tracer-pl test`` writes.

:func:`evaluate` runs Lightning's test (or validation) loop of a :class:`~tracer_pl.module.TracerModule` on a data
module and writes ``<log_dir>/<stage>_metrics.json`` with :func:`write_metrics`, the same function the command
line uses, next to the per-problem ``<stage>_records_<dataset>.jsonl`` the module writes. ``tracer-pl report``
reads both.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import lightning as L
import torch
from torchmetrics.aggregation import MeanMetric

from tracer_pl.baselines import chain_of_thought, debate, majority_vote
from tracer_pl.controllers import EvalProtocol
from tracer_pl.dialogue import DialogueRecord, DialogueResult
from tracer_pl.distributed import gather_objects
from tracer_pl.keys import eval_key
from tracer_pl.metrics import problem_metrics, record_json, state_decisions
from tracer_pl.problem import Problem

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


class EvaluationMixin:
    """Validation and test of :class:`~tracer_pl.module.TracerModule`.

    TRACER's dialogue with average-strategy controllers (each protocol of ``evaluation.protocols``) or a
    baseline, logged per dataset, with the per-problem records written as JSONL.

    The module provides ``evaluation``, ``dialogue_config``, ``eval_seed``, ``backbone``, ``proposer``,
    ``controllers``, ``eval_metrics``, ``_dialogue`` and the Lightning logging API.
    """

    def validation_step(self, batch: Sequence[Problem], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step("val", batch, dataloader_idx)

    def test_step(self, batch: Sequence[Problem], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step("test", batch, dataloader_idx)

    def _eval_step(self, stage: str, batch: Sequence[Problem], dataloader_idx: int) -> None:
        self._check_prompts(batch)
        name = self._dataset_name(stage, dataloader_idx)
        if self.evaluation.method != "tracer":
            self._log_eval(stage, name, self._evaluate(list(batch)))
            return
        for i, protocol in enumerate(self.evaluation.protocols):
            records = self._play(batch, protocol=protocol).records
            self._log_eval(stage, name if i == 0 else f"{name}@{protocol}", records)

    def _log_eval(self, stage: str, name: str, records: list[DialogueRecord]) -> None:
        """Per-problem metrics, speak rates per controller state, and the records for the JSONL file."""
        self._eval_records.setdefault(name, []).extend(record_json(r) for r in records)
        rows = [problem_metrics(r) for r in records]
        values = {eval_key(stage, name, metric): [row[metric] for row in rows] for metric in rows[0]}
        for key, rates in state_decisions(records, self.controllers).items():
            count = self._state_counts.setdefault(eval_key(stage, name, key), [0.0, 0])
            count[0], count[1] = count[0] + sum(rates), count[1] + len(rates)
        for key, samples in values.items():
            if key not in self.eval_metrics:
                self.eval_metrics[key] = MeanMetric().to(self.device)
            tracker = self.eval_metrics[key]
            tracker.update(torch.tensor(samples, dtype=torch.float32))
            self.log(key, tracker, on_step=False, on_epoch=True, batch_size=len(samples), add_dataloader_idx=False,
                     prog_bar=key.endswith("/accuracy") and "@" not in key, metric_attribute=f"eval_metrics.{key}")

    def on_test_epoch_start(self) -> None:
        self._start_eval()

    def on_validation_epoch_start(self) -> None:
        self._start_eval()

    def _start_eval(self) -> None:
        # one RNG per protocol, so adding a protocol never changes what another one samples
        self._eval_generators = {p: torch.Generator().manual_seed(self.eval_seed) for p in ("sample", "argmax")}
        self._eval_records: dict[str, list[dict[str, Any]]] = {}
        self._state_counts: dict[str, list[float]] = {}

    def on_test_epoch_end(self) -> None:
        self._log_state_rates()
        self._write_records("test")

    def on_validation_epoch_end(self) -> None:
        self._log_state_rates()
        self._write_records("val")

    def _log_state_rates(self) -> None:
        """Speak/refresh rate per controller state over the epoch, pooled over all processes.

        States visited differ between processes, so these are gathered once at the end (one collective every
        process joins) rather than synchronised per key.
        """
        pooled: dict[str, list[float]] = {}
        for counts in gather_objects(self._state_counts):
            for key, (speaking, total) in counts.items():
                entry = pooled.setdefault(key, [0.0, 0])
                entry[0], entry[1] = entry[0] + speaking, entry[1] + total
        for key, (speaking, total) in sorted(pooled.items()):
            self.log(key, speaking / total, add_dataloader_idx=False, rank_zero_only=True)

    def _write_records(self, stage: str) -> None:
        """Per-problem records (question, gold, every turn, final answer, tokens) as JSONL in the log directory."""
        if self.trainer.sanity_checking:
            return
        directory = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        directory.mkdir(parents=True, exist_ok=True)
        suffix = f".rank{self.global_rank}" if self.trainer.world_size > 1 else ""
        for name, records in self._eval_records.items():
            path = directory / f"{stage}_records_{name}{suffix}.jsonl"
            path.write_text("".join(json.dumps(r) + "\n" for r in records))

    def _dataset_name(self, stage: str, dataloader_idx: int) -> str:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        names = getattr(datamodule, f"{stage}_names", None)
        return names[dataloader_idx] if names else f"set{dataloader_idx}"

    def _evaluate(self, batch: list[Problem]) -> list[DialogueRecord]:
        """Records of the configured evaluation method on ``batch`` (no updates)."""
        e, greedy = self.evaluation, self.dialogue_config.eval_greedy
        methods = {
            "tracer": lambda: self._play(batch).records,
            "cot": lambda: chain_of_thought(batch, self.backbone, self.proposer, greedy=greedy),
            "majority_vote": lambda: majority_vote(batch, self.backbone, self.proposer, samples=e.samples),
            "debate": lambda: debate(batch, self.backbone, self.proposer, agents=e.debate_agents,
                                     rounds=e.debate_rounds),
        }
        return methods[e.method]()

    def _play(self, batch: Sequence[Problem], *, protocol: EvalProtocol = "sample") -> DialogueResult:
        """The batch's dialogues in evaluation: average-strategy controllers, no updates."""
        dialogue = self._dialogue(batch, training=False, protocol=protocol)
        for round_index, seat in dialogue.schedule():
            current = dialogue.decide(round_index, seat)
            dialogue.speak(current)
            dialogue.settle(current)
        return dialogue.result()

    def evaluate(self, datamodule: L.LightningDataModule, *, trainer: L.Trainer | None = None,
                 stage: Literal["test", "val"] = "test", ckpt_path: str | None = None) -> dict[str, float]:
        """Evaluate this module on ``datamodule``'s test sets from Python, writing what ``tracer-pl test`` writes.

        See :func:`tracer_pl.evaluation.evaluate`.
        """
        from tracer_pl.evaluation import evaluate

        return evaluate(self, datamodule, trainer=trainer, stage=stage, ckpt_path=ckpt_path)


__all__ = ["EvaluationMixin", "evaluate", "stage_metrics", "write_metrics"]
