"""TRACER against single-agent GSPO on the released code's protocol: the study of docs/results/run_released.sh.

    python docs/results/released_analysis.py OUT REPORT     # e.g. runs/released docs/results/released

The study fits TRACER and single-agent GSPO (stopped at TRACER's generated tokens) with seeds 42 and 7 (run
directories ``tracer``, ``single_agent_gspo``, ``tracer_seed7``, ``single_agent_gspo_seed7``) and tests each fitted
run twice: under the authors' evaluation protocol (``<run>.authors``: text sampled at the training temperature,
the controllers' argmax) and under this library's default (``<run>.today``: greedy text, average strategy
sampled), each on ``basic_arithmetic`` (in domain) and on ``products`` and ``gcd`` (out of domain).

Writes to REPORT ``released.md`` and ``released.json``. For each protocol and seed: accuracy with its 95% Wilson
interval per test set and pooled out of domain, for TRACER and single-agent GSPO; the paired difference
(single-agent GSPO minus TRACER) with its 95% Bonett-Price interval and exact McNemar p-value; that p-value
Holm-Bonferroni-adjusted over the whole family of these differences (every protocol, seed and test set present,
pooled included); test tokens and calls per problem. Per seed: each fit's generated training tokens and their
ratio (single-agent GSPO over TRACER). Per run: minutes from ``OUT/timings.txt``.

A study still running is fine: the report gives what exists, lists what is missing, and the script exits 0.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tracer_pl.errors import DataError
from tracer_pl.reporting.report import chosen_test, correctness
from tracer_pl.reporting.run_files import training_log
from tracer_pl.reporting.statistics import mcnemar_p, paired_difference_interval, wilson_interval

PROTOCOLS = {
    "authors": "the authors' protocol (text sampled at the training temperature, controllers' argmax)",
    "today": "this library's default (greedy text, average strategy sampled)",
}
SEEDS = {42: "", 7: "_seed7"}  # seed -> suffix of its run directories
TRACER, SINGLE = "tracer", "single_agent_gspo"
METHODS = {TRACER: "TRACER", SINGLE: "single-agent GSPO"}
IN_DOMAIN = "basic_arithmetic"
FAMILIES = ("products", "gcd")
POOLED = "out of domain (pooled)"
SETS = (IN_DOMAIN, *FAMILIES, POOLED)
PROBLEMS_PER_STEP = 2  # the study's training batches hold 2 problems
GENERATED = "train/generated_tokens_total"
PER_PROBLEM = "train/completion_tokens_per_problem"


def run_name(method: str, seed: int) -> str:
    """The directory of a fitted run: ``tracer``, ``single_agent_gspo_seed7``, ..."""
    return method + SEEDS[seed]


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni-adjusted p-values, in the order given.

    The i-th smallest of m p-values is multiplied by m - i + 1 (i from 1), the products are made non-decreasing
    in that order (each the largest so far), and capped at 1.
    """
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [0.0] * len(p_values)
    largest = 0.0
    for rank, i in enumerate(order):
        largest = max(largest, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = largest
    return adjusted


def accuracy(outcomes: dict[Any, bool]) -> dict[str, float]:
    """Right answers, accuracy and its 95% Wilson interval."""
    n, right = len(outcomes), sum(outcomes.values())
    low, high = wilson_interval(right, n)
    return {"problems": n, "right": right, "accuracy": right / n, "ci_low": low, "ci_high": high}


def paired(method: dict[Any, bool], reference: dict[Any, bool]) -> dict[str, float] | None:
    """Method minus reference on their shared problems: difference, 95% Bonett-Price interval, McNemar p."""
    shared = sorted(method.keys() & reference.keys(), key=str)
    if not shared:
        return None
    b = sum(method[u] and not reference[u] for u in shared)
    c = sum(reference[u] and not method[u] for u in shared)
    low, high = paired_difference_interval(b, c, len(shared))
    return {"problems": len(shared), "difference": (b - c) / len(shared), "ci_low": low, "ci_high": high,
            "only_method_right": b, "only_reference_right": c, "p_value": mcnemar_p(b, c)}


@dataclass
class Study:
    """What was found under OUT, and what was not."""

    out: Path
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def outcomes(self, test_run: str) -> dict[str, dict[Any, bool]]:
        """Per test set of a test run: ``uid -> right``, the out-of-domain families also pooled."""
        directory = self.out / test_run
        if not directory.is_dir():
            self.missing.append(f"{test_run}: not run yet")
            return {}
        try:
            graded = correctness(directory)
        except DataError as error:
            self.missing.append(f"{test_run}: unreadable ({error})")
            return {}
        sets = {k: v for k, v in graded.items() if "@" not in k and v}
        absent = [s for s in (IN_DOMAIN, *FAMILIES) if s not in sets]
        if len(absent) == 3:
            self.missing.append(f"{test_run}: no test records")
            return {}
        if absent:
            self.missing.append(f"{test_run}: no test records of {', '.join(absent)}")
        if not (directory / ".done").exists():
            self.notes.append(f"{test_run} has no .done file: its test may still be running")
        if all(f in sets for f in FAMILIES):
            sets[POOLED] = {(f, uid): ok for f in FAMILIES for uid, ok in sets[f].items()}
        return sets

    def test_cost(self, test_run: str, sets: dict[str, dict[Any, bool]]) -> dict[str, dict[str, float]]:
        """Test tokens and calls per problem per test set (pooled: weighted by the families' problems)."""
        try:
            metrics = chosen_test(self.out / test_run).metrics
        except DataError as error:
            self.notes.append(f"{test_run}: test metrics unreadable ({error})")
            return {}
        cost = {s: {"tokens_per_problem": metrics[s]["tokens_per_problem"],
                    "calls_per_problem": metrics[s]["calls_per_problem"]}
                for s in (IN_DOMAIN, *FAMILIES) if s in metrics and s in sets}
        if all(f in cost for f in FAMILIES):
            weights = {f: len(sets[f]) for f in FAMILIES}
            cost[POOLED] = {key: sum(cost[f][key] * weights[f] for f in FAMILIES) / sum(weights.values())
                            for key in ("tokens_per_problem", "calls_per_problem")}
        return cost

    def training_tokens(self, fit_run: str) -> dict[str, Any] | None:
        """The completion tokens a fit generated in training, from its ``metrics.csv`` (resumed fits joined).

        The last logged ``train/generated_tokens_total`` when the fit logged it, else the sum over its training
        rows of ``train/completion_tokens_per_problem`` times the 2 problems of a batch.
        """
        directory = self.out / fit_run
        if not directory.is_dir():
            self.missing.append(f"{fit_run}: not fitted yet")
            return None
        try:
            rows = training_log(directory)
        except DataError as error:
            self.missing.append(f"{fit_run}: training log unreadable ({error})")
            return None
        totals = [row[GENERATED] for row in rows if GENERATED in row]
        steps = [row[PER_PROBLEM] for row in rows if PER_PROBLEM in row]
        if totals:
            return {"tokens": totals[-1], "source": GENERATED, "batches": len(steps)}
        if steps:
            return {"tokens": sum(steps) * PROBLEMS_PER_STEP, "source": f"sum of {PER_PROBLEM} × {PROBLEMS_PER_STEP}",
                    "batches": len(steps)}
        self.missing.append(f"{fit_run}: no training tokens logged yet")
        return None


_TIMING = re.compile(r"^(\S+)\s+(fit|fitted|test|done)\s+(\S+)\s*$")
_BUDGET = re.compile(r"^\S+\s+(\S+) generated (\d+) tokens in training")


def _time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def timings(path: Path) -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
    """Minutes per run from ``timings.txt``, and the single-agent budgets the script stamped.

    A fit runs from ``fit <name>`` to ``fitted <name>``, a test from ``test <name>`` to ``done <name>``. A run
    resumed after an interruption has several intervals, summed; a start with no end before the next start of the
    same run (interrupted) or at the end of the file (running) adds nothing and is counted as unfinished.
    """
    minutes: dict[str, dict[str, Any]] = {}
    budgets: dict[str, int] = {}
    started: dict[str, datetime] = {}
    ends = {"fitted": "fit", "done": "test"}
    for line in path.read_text().splitlines():
        if budget := _BUDGET.match(line):
            budgets[budget.group(1)] = int(budget.group(2))
            continue
        match = _TIMING.match(line)
        if not match:
            continue
        stamp, event, name = _time(match.group(1)), match.group(2), match.group(3)
        kind = ends.get(event, event)
        entry = minutes.setdefault(name, {"kind": kind, "minutes": 0.0, "intervals": 0, "unfinished": 0})
        if event in ("fit", "test"):
            if name in started:
                entry["unfinished"] += 1
            started[name] = stamp
        elif name in started:
            entry["minutes"] += (stamp - started.pop(name)).total_seconds() / 60
            entry["intervals"] += 1
    for name in started:
        minutes[name]["unfinished"] += 1
    return minutes, budgets


def analyse(out: Path) -> dict[str, Any]:
    """Every number of the report, as plain data."""
    study = Study(out)
    protocols: dict[str, dict[int, dict[str, Any]]] = {}
    for protocol in PROTOCOLS:
        protocols[protocol] = {}
        for seed in SEEDS:
            found = {m: study.outcomes(f"{run_name(m, seed)}.{protocol}") for m in METHODS}
            result: dict[str, Any] = {
                "accuracy": {m: {s: accuracy(found[m][s]) for s in SETS if s in found[m]} for m in METHODS},
                "test_cost": {m: study.test_cost(f"{run_name(m, seed)}.{protocol}", found[m])
                              for m in METHODS if found[m]},
                "difference": {},
            }
            for s in SETS:
                if s in found[SINGLE] and s in found[TRACER]:
                    difference = paired(found[SINGLE][s], found[TRACER][s])
                    if difference is not None:
                        result["difference"][s] = difference
            protocols[protocol][seed] = result
    family = [(protocol, seed, s) for protocol in protocols for seed in SEEDS
              for s in protocols[protocol][seed]["difference"]]
    adjusted = holm([protocols[p][seed]["difference"][s]["p_value"] for p, seed, s in family])
    for (p, seed, s), value in zip(family, adjusted):
        protocols[p][seed]["difference"][s]["p_holm"] = value
    tokens: dict[int, dict[str, Any]] = {}
    for seed in SEEDS:
        fits = {m: study.training_tokens(run_name(m, seed)) for m in METHODS}
        tokens[seed] = {m: fit for m, fit in fits.items() if fit is not None}
        if fits[TRACER] and fits[SINGLE] and fits[TRACER]["tokens"] > 0:
            tokens[seed]["ratio"] = fits[SINGLE]["tokens"] / fits[TRACER]["tokens"]
    timings_path = out / "timings.txt"
    minutes, budgets = timings(timings_path) if timings_path.is_file() else ({}, {})
    if not timings_path.is_file():
        study.missing.append("timings.txt: not written yet")
    for seed in SEEDS:
        if run_name(TRACER, seed) in budgets:
            tokens[seed]["single_agent_budget"] = budgets[run_name(TRACER, seed)]
    return {
        "study": str(out),
        "protocols": {p: {str(seed): v for seed, v in seeds.items()} for p, seeds in protocols.items()},
        "holm": {"family_size": len(family),
                 "family": [f"{p}, seed {seed}, {s}" for p, seed, s in family],
                 "complete_family_size": len(PROTOCOLS) * len(SEEDS) * len(SETS)},
        "training_tokens": {str(seed): v for seed, v in tokens.items()},
        "minutes": minutes,
        "missing": study.missing,
        "notes": study.notes,
    }


def _acc(a: dict[str, float] | None) -> str:
    return "—" if a is None else f"{a['accuracy']:.3f} ({a['ci_low']:.3f}–{a['ci_high']:.3f})"


def _p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _diff(d: dict[str, float] | None) -> list[str]:
    if d is None:
        return ["—", "—", "—"]
    return [f"{d['difference']:+.3f} ({d['ci_low']:+.3f} to {d['ci_high']:+.3f})", _p(d["p_value"]),
            _p(d["p_holm"])]


def _cost(c: dict[str, float] | None) -> str:
    return "—" if c is None else f"{c['tokens_per_problem']:.0f} / {c['calls_per_problem']:.1f}"


def markdown(result: dict[str, Any]) -> str:
    """The report's page."""
    holm_family = result["holm"]
    lines = [
        "# TRACER against single-agent GSPO on the released code's protocol", "",
        f"Study directory: `{result['study']}` (docs/results/run_released.sh). In domain: `{IN_DOMAIN}`; out of "
        f"domain: `{'`, `'.join(FAMILIES)}`, also pooled. Accuracies carry 95% Wilson intervals; differences "
        "(single-agent GSPO minus TRACER, same seed, same protocol) 95% Bonett–Price intervals and exact McNemar "
        f"p-values, also Holm–Bonferroni-adjusted over the family of all {holm_family['family_size']} such "
        "differences below (every protocol, seed and test set, pooled included"
        + ("" if holm_family["family_size"] == holm_family["complete_family_size"]
           else f"; {holm_family['complete_family_size']} when the study is complete") + ").", "",
    ]
    if result["missing"]:
        lines += ["**Missing** (the study may still be running; the numbers below are of what exists, and the "
                  "adjusted p-values will change as the family grows):", ""]
        lines += [f"- {m}" for m in result["missing"]] + [""]
    for protocol, title in PROTOCOLS.items():
        lines += [f"## {protocol}: {title}", "",
                  "| seed | test set | TRACER | single-agent GSPO | difference (95% CI) | McNemar p | Holm p |",
                  "|---|---|---|---|---|---:|---:|"]
        for seed, values in result["protocols"][protocol].items():
            for s in SETS:
                acc = values["accuracy"]
                row = [_acc(acc[TRACER].get(s)), _acc(acc[SINGLE].get(s)), *_diff(values["difference"].get(s))]
                lines.append(f"| {seed} | {s} | " + " | ".join(row) + " |")
        lines += ["", "Test tokens / calls per problem:", "",
                  "| seed | method | " + " | ".join(SETS) + " |", "|---|---|" + "---:|" * len(SETS)]
        for seed, values in result["protocols"][protocol].items():
            for m, label in METHODS.items():
                cost = values["test_cost"].get(m, {})
                lines.append(f"| {seed} | {label} | " + " | ".join(_cost(cost.get(s)) for s in SETS) + " |")
        lines.append("")
    lines += ["## Generated training tokens", "",
              "| seed | TRACER | single-agent GSPO | single-agent / TRACER | single-agent budget |",
              "|---|---:|---:|---:|---:|"]
    for seed, values in result["training_tokens"].items():
        cells = [f"{values[m]['tokens']:,.0f}" if m in values else "—" for m in METHODS]
        cells.append(f"{values['ratio']:.2f}×" if "ratio" in values else "—")
        cells.append(f"{values['single_agent_budget']:,}" if "single_agent_budget" in values else "—")
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    lines += ["", f"From each fit's `metrics.csv` (resumed fits joined): the last `{GENERATED}`, else the sum of "
              f"`{PER_PROBLEM}` × {PROBLEMS_PER_STEP}.", "", "## Minutes", "",
              "| run | what | minutes | intervals | unfinished |", "|---|---|---:|---:|---:|"]
    for name, entry in result["minutes"].items():
        lines.append(f"| {name} | {entry['kind']} | {entry['minutes']:.1f} | {entry['intervals']} | "
                     f"{entry['unfinished']} |")
    total = sum(entry["minutes"] for entry in result["minutes"].values())
    lines += ["", f"Wall-clock minutes from `timings.txt` (a fit from `fit` to `fitted`, a test from `test` to "
              f"`done`); {total:.1f} minutes of one thread in all. `unfinished` counts attempts stopped before their "
              "end (a fit later resumed from its last checkpoint, a test rerun from the start); their minutes are "
              "not in the table."]
    if result["notes"]:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    """``OUT REPORT``: write ``released.md`` and ``released.json``."""
    if len(argv) != 2:
        raise SystemExit(__doc__)
    out, report = Path(argv[0]), Path(argv[1])
    result = analyse(out)
    report.mkdir(parents=True, exist_ok=True)
    (report / "released.json").write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    (report / "released.md").write_text(markdown(result))
    missing = f"; {len(result['missing'])} missing (listed there)" if result["missing"] else ""
    print(f"wrote {report / 'released.md'} and released.json{missing}")


if __name__ == "__main__":
    main(sys.argv[1:])
