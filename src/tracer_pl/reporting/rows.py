"""A row of the report's accuracy table: one method on one dataset."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Row:
    """One method on one dataset."""

    method: str
    dataset: str
    problems: int | None
    accuracy: float
    ci_low: float | None
    ci_high: float | None
    tokens_per_problem: float
    calls_per_problem: float
    correction: float
    preservation: float


__all__ = ["Row"]
