"""Answer reading and grading on the corpus of model-style outputs in tests/corpus (see its README).

Each row holds a model-style text, the answer it means (``intended``, null when it gives none), the gold answer
and whether that text is right (``correct``). tracer_pl must read ``intended`` and grade ``correct``.
"""

import json
from pathlib import Path

import pytest

from tracer_pl.answers import extract_answer, is_equivalent

CORPUS = Path(__file__).resolve().parent / "corpus"
DATASETS = {"gsm8k": "gsm8k", "math500": "math500", "gpqa": "gpqa_diamond"}


def corpus_rows(name):
    return [json.loads(line) for line in (CORPUS / f"{name}.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_corpus_is_large_and_checks_both_grades(name):
    rows = corpus_rows(name)
    assert len(rows) >= 100
    assert len({row["id"] for row in rows}) == len(rows)
    assert sum(row["correct"] for row in rows) >= 60  # mostly right answers, in many formats
    assert sum(row["intended"] is not None and not row["correct"] for row in rows) >= 10  # wrong answers
    assert any(row["intended"] is None for row in rows)  # and texts that give none


@pytest.mark.parametrize(
    "name, row",
    [(name, row) for name in sorted(DATASETS) for row in corpus_rows(name)],
    ids=lambda x: x if isinstance(x, str) else x["id"],
)
def test_corpus_row_is_read_and_graded_as_intended(name, row):
    dataset = DATASETS[name]
    read = extract_answer(row["text"], dataset)
    if row["intended"] is None:
        assert read is None, row["note"]
    else:
        assert read is not None and is_equivalent(read, row["intended"], dataset), (read, row["note"])
    assert is_equivalent(read, row["gold"], dataset) is row["correct"], (read, row["note"])
