"""Per-problem outcome metrics of finished dialogues, and the per-problem records written next to them.

Behaviour metrics (TRACER §4), each a fraction of *all* evaluated problems:

* ``first_parseable`` -- some proposal gave a parseable answer;
* ``correction`` -- the first parseable answer was wrong and the final answer is right;
* ``preservation`` -- the first parseable answer was right and the final answer is right;
* ``accuracy_round<r>`` -- the pending answer after round ``r`` is right.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from tracer_pl.dialogue import DialogueRecord


def problem_metrics(record: DialogueRecord) -> dict[str, float]:
    """The metrics of one problem as 0/1 values (costs as counts); averaging them gives the set's metrics."""
    first = record.first_correct
    metrics = {
        "accuracy": float(record.correct),
        "first_parseable": float(first is not None),
        "correction": float(first is False and record.correct),
        "preservation": float(first is True and record.correct),
        "tokens_per_problem": float(record.tokens),
        "calls_per_problem": float(record.calls),
    }
    for round_index, correct in enumerate(record.correct_after_round, start=1):
        metrics[f"accuracy_round{round_index}"] = float(correct)
    return metrics


def mean_metrics(records: Sequence[DialogueRecord]) -> dict[str, float]:
    """Averages of :func:`problem_metrics` over ``records``."""
    rows = [problem_metrics(r) for r in records]
    return {key: sum(row[key] for row in rows) / len(rows) for key in rows[0]} if rows else {}


def record_json(record: DialogueRecord) -> dict[str, Any]:
    """One problem as a JSON-ready dict: question, gold, every turn, the final answer and the costs."""
    return {
        "uid": record.problem.uid,
        "dataset": record.problem.dataset,
        "question": record.problem.question,
        "gold": record.problem.gold,
        "final_answer": record.final_answer,
        "correct": record.correct,
        "first_answer": record.first_answer,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "calls": record.calls,
        "turns": [{**asdict(t), "state": list(t.state) if t.state is not None else None} for t in record.turns],
    }
