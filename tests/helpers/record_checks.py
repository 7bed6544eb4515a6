"""Evaluation metrics recomputed from the per-problem records a run wrote, to check the logged ones against."""

import json
from pathlib import Path

import lightning as L
import pytest

from tracer_pl.grading.answers import is_equivalent


def read_records(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def expected_metrics(records):
    """accuracy, behaviour metrics and costs as TRACER §4 defines them, from JSON records alone."""
    first_right = [None if r["first_answer"] is None else is_equivalent(r["first_answer"], r["gold"], r["dataset"])
                   for r in records]
    n = len(records)
    return {
        "accuracy": sum(r["correct"] for r in records) / n,
        "first_parseable": sum(f is not None for f in first_right) / n,
        "correction": sum(f is False and r["correct"] for f, r in zip(first_right, records)) / n,
        "preservation": sum(f is True and r["correct"] for f, r in zip(first_right, records)) / n,
        "calls_per_problem": sum(r["calls"] for r in records) / n,
        "tokens_per_problem": sum(r["prompt_tokens"] + r["completion_tokens"] for r in records) / n,
    }


def assert_metrics_match_records(metrics, prefix, records_path):
    """Every metric ``<prefix>/<name>`` equals its value recomputed from the records file."""
    records = read_records(records_path)
    assert records, f"{records_path} is empty"
    for name, value in expected_metrics(records).items():
        assert metrics[f"{prefix}/{name}"] == pytest.approx(value), name
    return records


class TrainingRecords(L.Callback):
    """Keeps the dialogue records of every training batch (what ``TracerModule.training_step`` returns)."""

    def __init__(self) -> None:
        self.records = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.records.extend(outputs["records"])
