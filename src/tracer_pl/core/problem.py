"""The unit of work: one reasoning problem with a checkable gold answer."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One reasoning problem.

    Attributes:
        question: The text shown to the agents. For multiple-choice sets it already lists the options A-D.
        gold: The gold final answer as a string (a number for GSM8K, LaTeX for MATH500, a letter for GPQA).
        dataset: Name of the answer format in :mod:`tracer_pl.grading.answers` used to parse and grade answers.
        uid: A stable identifier (source and row), used in per-problem records and seeded shuffles.
    """

    question: str
    gold: str
    dataset: str = "gsm8k"
    uid: str = ""
