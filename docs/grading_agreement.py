"""How often answer graders read the answer a text intends, on the corpora in tests/corpus.

Two corpora: the development corpus (``tests/corpus``, written beside the extraction code) and the held-out one
(``tests/corpus/heldout``, written by an author who never saw that code); each gets its own tables.

Graders: tracer_pl (``extract_answer`` + ``is_equivalent``); for GSM8K, lm-evaluation-harness's two filters
of ``lm_eval/tasks/gsm8k/gsm8k.yaml`` (``strict-match`` and ``flexible-extract``, each a ``regex`` filter then
``take_first``, graded by its ``exact_match`` with ``ignore_case`` and ``regexes_to_ignore``), reimplemented
here; and math-verify used directly (``parse(text)``, then ``verify(parse(gold), ...)``) on all three.

    python docs/grading_agreement.py            # rewrite the generated part of docs/grading.md
    python docs/grading_agreement.py --print    # print the Markdown instead
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from math_verify import parse, verify  # noqa: E402

from tracer_pl import extract_answer, is_equivalent  # noqa: E402

CORPUS = ROOT / "tests" / "corpus"
DOC = ROOT / "docs" / "grading.md"
CORPORA = {  # corpus folder -> the markers around its generated tables in docs/grading.md
    CORPUS: ("<!-- agreement: start (generated) -->", "<!-- agreement: end -->"),
    CORPUS / "heldout": ("<!-- held-out agreement: start (generated) -->", "<!-- held-out agreement: end -->"),
}
DATASETS = {"gsm8k": "gsm8k", "math500": "math500", "gpqa": "gpqa_diamond"}

# lm_eval/tasks/gsm8k/gsm8k.yaml (metadata version 3.0)
STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
IGNORE = [",", "\\$", "(?s).*#### ", "\\.$"]  # exact_match's regexes_to_ignore; ignore_case: true
INVALID = "[invalid]"  # the regex filter's fallback


@dataclass
class Grader:
    """A way to read an answer out of a text and to compare it with an answer string."""

    name: str
    read: Callable[[str], tuple[str | None, Any]]  # (what it read, for display; what it compares)
    same: Callable[[Any, str], bool]


def lm_eval_regex(pattern: re.Pattern[str], group_select: int) -> Callable[[str], tuple[str | None, Any]]:
    """lm-eval's ``regex`` filter: the ``group_select``-th match, its first non-empty group, stripped."""

    def read(text: str) -> tuple[str | None, Any]:
        found = pattern.findall(text)
        if not found:
            return None, INVALID
        match = found[group_select]
        if isinstance(match, tuple):
            groups = [group for group in match if group]
            match = groups[0] if groups else INVALID
        return match.strip(), match.strip()

    return read


def lm_eval_exact_match(prediction: str, reference: str) -> bool:
    """lm-eval's ``exact_match`` with the GSM8K task's ``regexes_to_ignore`` and ``ignore_case``."""
    for pattern in IGNORE:
        prediction, reference = re.sub(pattern, "", prediction), re.sub(pattern, "", reference)
    return prediction.lower() == reference.lower()


def math_verify_read(text: str) -> tuple[str | None, Any]:
    """math-verify's ``parse`` with its default configs: the extracted string, and the parsed list."""
    parsed = parse(text)
    strings = [item for item in parsed if isinstance(item, str)]
    return (strings[-1] if strings else None), parsed


def math_verify_same(parsed: Any, answer: str) -> bool:
    """math-verify's ``verify`` of a parsed prediction against ``answer`` (gold first)."""
    return bool(parsed) and bool(verify(parse(f"${answer}$"), parsed))  # math-verify wants gold delimited


def tracer(dataset: str) -> Grader:
    """tracer_pl's ``extract_answer`` and ``is_equivalent`` under ``dataset``'s format."""

    def read(text: str) -> tuple[str | None, Any]:
        answer = extract_answer(text, dataset)
        return answer, answer

    return Grader("tracer_pl", read, lambda answer, gold: is_equivalent(answer, gold, dataset))


def graders(name: str) -> list[Grader]:
    """The graders compared on benchmark ``name``; lm-eval's regexes only on GSM8K."""
    made = [tracer(DATASETS[name])]
    if name == "gsm8k":
        made.append(Grader("lm-eval strict-match", lm_eval_regex(STRICT, 0), lm_eval_exact_match))
        made.append(Grader("lm-eval flexible-extract", lm_eval_regex(FLEXIBLE, -1), lm_eval_exact_match))
    made.append(Grader("math-verify", math_verify_read, math_verify_same))
    return made


def judge(grader: Grader, row: dict[str, Any]) -> dict[str, Any]:
    """What ``grader`` read in ``row``, whether that is the intended answer, and whether its grade is right."""
    shown, compared = grader.read(row["text"])
    if row["intended"] is None:
        reads_intended = shown is None
    else:
        reads_intended = shown is not None and grader.same(compared, row["intended"])
    graded_right = shown is not None and grader.same(compared, row["gold"])
    return {"shown": shown, "reads_intended": reads_intended, "grade_ok": graded_right == row["correct"]}


def rows_of(corpus: Path, name: str) -> list[dict[str, Any]]:
    """The rows of benchmark ``name`` in the corpus folder ``corpus``."""
    return [json.loads(line) for line in (corpus / f"{name}.jsonl").read_text().splitlines()]


def cell(text: str | None, limit: int = 0) -> str:
    """``text`` made safe for a Markdown table cell; its last ``limit`` characters when ``limit``."""
    if text is None:
        return "—"
    text = text.replace("\n", " ⏎ ").replace("|", "\\|").replace("`", "'")
    if limit and len(text) > limit:
        text = "…" + text[-limit:]
    return text


def report(corpus: Path) -> str:
    """The summary table and one table of disagreements per benchmark of ``corpus``, between its markers."""
    summary = [
        "| benchmark | grader | reads the intended answer | grades right/wrong as intended |",
        "|---|---|---:|---:|",
    ]
    details = []
    for name in DATASETS:
        rows, judges = rows_of(corpus, name), graders(name)
        results = [[judge(grader, row) for grader in judges] for row in rows]
        for k, grader in enumerate(judges):
            read = sum(result[k]["reads_intended"] for result in results)
            graded = sum(result[k]["grade_ok"] for result in results)
            summary.append(
                f"| {name} | {grader.name} | {read}/{len(rows)} ({read / len(rows):.1%}) "
                f"| {graded}/{len(rows)} ({graded / len(rows):.1%}) |"
            )
        details += [
            "",
            f"**{name}**: every row where a grader reads something other than the intended answer or grades it "
            "wrongly (✗ marks that grader).",
            "",
            "| row | end of the text | intended | gold | " + " | ".join(g.name for g in judges) + " |",
            "|---" * (4 + len(judges)) + "|",
        ]
        for row, result in zip(rows, results):
            if all(r["reads_intended"] and r["grade_ok"] for r in result):
                continue
            reads = [("" if r["reads_intended"] and r["grade_ok"] else "✗ ") + f"`{cell(r['shown'])}`" for r in result]
            details.append(
                f"| {row['id']} | {cell(row['text'], 70)} | `{cell(row['intended'])}` | `{cell(row['gold'])}` | "
                + " | ".join(reads)
                + " |"
            )
    start, end = CORPORA[corpus]
    return "\n".join([start, "", *summary, *details, "", end])


def main() -> None:
    """Write the tables into docs/grading.md, or print them with ``--print``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--print", action="store_true", help="print the tables instead of writing docs/grading.md")
    args = parser.parse_args()
    doc = DOC.read_text()
    for corpus, (start, end) in CORPORA.items():
        tables = report(corpus)
        if args.print:
            print(tables)
            continue
        if start not in doc or end not in doc:
            raise SystemExit(f"{DOC}: expected the markers {start!r} and {end!r} around the generated tables")
        head, rest = doc.split(start, 1)
        doc = head + tables + rest.split(end, 1)[1]
    if not args.print:
        DOC.write_text(doc)
        print(f"wrote the agreement tables into {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
