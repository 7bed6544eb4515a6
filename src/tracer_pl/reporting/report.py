"""``tracer-pl report``: one Markdown table and PNG plots for any set of run directories.

A run directory is a ``--trainer.default_root_dir`` of ``tracer-pl fit`` and/or ``tracer-pl test``. The report
reads, from each one,

* the newest ``test_metrics.json`` (written by ``tracer-pl test``) and the ``test_records_<dataset>.jsonl``
  beside it (the number of problems);
* the training rows of its ``metrics.csv`` files (``CSVLogger``; a resumed fit's files joined), for the regret
  and speak-rate plots fed by :class:`~tracer_pl.training.callbacks.ControllerMonitor`.

"The newest" is the newest complete test: one that ran no batch, or a file left damaged, is skipped for the test
before it. Every file is checked as it is read (:mod:`~tracer_pl.reporting.run_files`): anything malformed is a
one-line :class:`DataError` naming the file, line and field; what is skipped instead (those newer tests, a line a
killed run left incomplete, problems a multi-process test repeated as padding, datasets a paired comparison cannot
pair) is listed in the report's "Sources", which also names the test each run's results come from.

It writes ``report.md`` (accuracy with a 95% Wilson interval, tokens and calls per problem, correction and
preservation per method and dataset), ``results.json`` (the same rows), ``accuracy_vs_tokens.png`` and, per
trained run, ``<run>_regret.png`` (average regret of every controller state against its visits M, with the
regret-matching bound that holds for the run: 2·sqrt(2B/M) for values in [-1, 1] when up to B decisions of a
state share one strategy, B being the problems per training step over all processes; no bound for the
importance-weighted ablation, whose values are not bounded) and ``<run>_speak_rates.png`` (each state's
average-strategy speaking probability over training), with a table of every controller state at the end of
training (visits, average regret against the bound, the log-log slope of average regret against visits, both
strategies, and how far the average strategy still moved over the last quarter of training).

With ``--paired REF`` (one of the run directories; repeat it for several references), every other run is also
compared with ``REF`` problem by problem (matched by ``uid``): the accuracy difference with a 95% Bonett-Price
interval and the exact McNemar p-value, also written to ``paired.json``. Paired on the same problems, this
separates smaller differences than two overlapping Wilson intervals can.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import re
import secrets
import stat
import tempfile
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tracer_pl.errors import DataError
from tracer_pl.keys import average_speaking_rate, speaking_rate
from tracer_pl.reporting.controller_log import bound_batch, bound_label, speaking_actions, state_series
from tracer_pl.reporting.plots import plot_accuracy_vs_tokens, plot_regret, plot_speak_rates
from tracer_pl.reporting.rows import Row
from tracer_pl.reporting.run_files import (
    Notes,
    file_kind,
    fit_status,
    json_type,
    of_one_run,
    read_json,
    read_jsonl,
    stat_mode,
    training_log,
    training_log_path,
)
from tracer_pl.reporting.statistics import (
    average_regret_bound,
    mcnemar_p,
    paired_difference_interval,
    regret_slope,
    wilson_interval,
)

COLUMNS = ("accuracy", "tokens_per_problem", "calls_per_problem", "correction", "preservation")


# ---------------------------------------------------------------------- reading runs
def run_labels(runs: Sequence[Path]) -> dict[Path, str]:
    """A distinct label per run: its directory name, with as many parent names as it takes to tell runs apart.

    Raises:
        DataError: when the same directory is given twice.
    """
    resolved = [run.resolve() for run in runs]
    twice = sorted({str(run) for run, r in zip(runs, resolved) if resolved.count(r) > 1})
    if twice:
        raise DataError(f"{twice[0]}: the same run directory is given twice")
    depth = {run: 1 for run in runs}
    while True:
        labels = {run: "/".join(r.parts[-depth[run]:]) for run, r in zip(runs, resolved)}
        clashing = [run for run in runs if list(labels.values()).count(labels[run]) > 1]
        if not clashing:
            return labels
        for run in clashing:
            depth[run] += 1


PROTOCOLS = ("sample", "argmax")
"""The evaluation protocols (``tracer_pl.core.controllers.EvalProtocol``); the writer names a dataset evaluated
with any but the first configured one ``<dataset>@<protocol>``."""

UNIT_METRICS = ("accuracy", "correction", "preservation")
"""Metrics that are fractions of the problems, so between 0 and 1; the others are counts per problem."""


def split_protocol(key: str, keys: Collection[str]) -> tuple[str, str]:
    """``(dataset, protocol)`` of a dataset key of the test metrics or records (``protocol`` empty for none).

    The writer appends ``@<protocol>`` only for a protocol it knows (:data:`PROTOCOLS`), and only to a dataset it
    also evaluated under its first protocol, with no suffix. So ``hard@set@argmax`` is the dataset ``hard@set``
    under ``argmax``, while ``hard@set`` alone (or ``x@argmax`` without ``x``) is a dataset named so.
    """
    base, at, protocol = key.rpartition("@")
    if at and protocol in PROTOCOLS and base in keys:
        return base, protocol
    return key, ""


def test_metrics(path: Path) -> dict[str, dict[str, float]]:
    """The metrics of one ``test_metrics.json`` per dataset key, every one the report uses checked.

    Raises:
        DataError: naming the file (and the key) for a file that cannot be read, is not a JSON object, or holds a
            metric of the table that is missing, not a number, not finite, or out of its range.
    """
    metrics = read_json(path)
    if not isinstance(metrics, dict):
        raise DataError(f"{path}: expected a JSON object of \"test/<dataset>/<metric>\": number, found "
                        f"{json_type(metrics)}")
    by_dataset: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) != 3 or parts[0] != "test":
            continue
        by_dataset.setdefault(parts[1], {})
        if parts[2] not in COLUMNS:
            continue
        high = 1.0 if parts[2] in UNIT_METRICS else math.inf
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not (number and math.isfinite(value) and 0 <= value <= high):
            expected = "a number between 0 and 1" if high == 1 else "a finite number of at least 0"
            raise DataError(f"{path}: {key} is {json.dumps(value)[:40]}; expected {expected}")
        by_dataset[parts[1]][parts[2]] = float(value)
    for dataset, values in sorted(by_dataset.items()):
        missing = [c for c in COLUMNS if c not in values]
        if missing:
            raise DataError(f"{path}: dataset {dataset!r} lacks the metrics {missing}")
    return by_dataset


@dataclass
class ChosenTest:
    """The test of a run the report uses: its newest complete ``test_metrics.json``, and the newer ones skipped."""

    path: Path | None
    metrics: dict[str, dict[str, float]]
    skipped: list[tuple[Path, str]]


def chosen_test(run: Path) -> ChosenTest:
    """The newest ``test_metrics.json`` of ``run`` that holds test metrics, with the reasons newer ones were skipped.

    A test that ran no batch (interrupted, or limited to none) writes a file without metrics; one killed while
    writing leaves a damaged file. Either is skipped for the newest complete test before it, and the report says
    so. When no test is complete, the newest damaged file's error is raised; when every one is empty, the result
    holds the newest with no metrics.
    """
    found = of_one_run(run, "test_metrics.json")
    skipped: list[tuple[Path, str]] = []
    error: DataError | None = None
    for path in reversed(found):
        try:
            metrics = test_metrics(path)
        except DataError as problem:
            error = error or problem
            skipped.append((path, str(problem).removeprefix(str(path)).lstrip(",: ")))
            continue
        if metrics:
            return ChosenTest(path, metrics, skipped)
        skipped.append((path, "it holds no test metrics (the test ran no batch, or was interrupted)"))
    if error is not None:
        raise error
    return ChosenTest(found[-1] if found else None, {}, skipped)


def records_files(directory: Path, key: str) -> list[Path]:
    """The per-problem records of a dataset key: ``test_records_<key>.jsonl``, or one file per process.

    A test on several processes writes ``test_records_<key>.rank<N>.jsonl`` per rank; they are taken in rank
    order. Names are compared as text, so a dataset name holding ``[`` or ``*`` means itself.
    """
    plain = directory / f"test_records_{key}.jsonl"
    if plain.exists() or plain.is_symlink():
        return [plain]
    rank = re.compile(re.escape(f"test_records_{key}") + r"\.rank(\d+)\.jsonl")
    ranks = sorted((int(m.group(1)), p) for p in directory.iterdir() if (m := rank.fullmatch(p.name)))
    return [p for _, p in ranks]


def _records_key(name: str, known: Collection[str] = ()) -> str:
    """The dataset key of a records file name, without the rank suffix of a multi-process test.

    The suffix stays when the test's metrics name a dataset that ends so (``known``).
    """
    key = name.removeprefix("test_records_").removesuffix(".jsonl")
    return key if key in known else re.sub(r"\.rank\d+$", "", key)


def _unique_records(files: Sequence[Path], notes: Notes) -> list[dict[str, Any]] | None:
    """A dataset's records, one per problem: the files of several processes joined; None without any file.

    The distributed sampler pads the processes' shares to equal length by repeating problems; a problem id met
    again in another process's file is that padding, kept once (and noted).
    """
    if not files:
        return None
    if len(files) == 1:
        return [row for _, row in read_jsonl(files[0])]
    seen: set[Any] = set()
    records, repeated = [], 0
    for path in files:
        for _, row in read_jsonl(path):
            uid = row.get("uid")
            if isinstance(uid, (str, int)) and not isinstance(uid, bool):
                if uid in seen:
                    repeated += 1
                    continue
                seen.add(uid)
            records.append(row)
    if repeated:
        notes.append((files[0].parent, _padding(repeated)))
    return records


def _problem_count(files: Sequence[Path], accuracy: float, metrics: Path, notes: Notes) -> int | None:
    """The number of problems of a dataset's accuracy, from its records; None (shown ``?``) when unknown.

    Records written by one process must agree with the accuracy (the mean of their ``correct``): records of
    another test beside these metrics would give the table a wrong number of problems and a wrong interval.

    Raises:
        DataError: naming both files, when the records' accuracy is not the metrics' accuracy.
    """
    records = _unique_records(files, notes)
    if records is None:
        return None
    if not records:
        notes.append((files[0], "holds no record, so the number of problems and the interval are unknown"))
        return None
    outcomes = [row.get("correct") for row in records]
    if len(files) == 1 and all(isinstance(o, bool) for o in outcomes):
        right = sum(outcomes)
        if abs(right / len(records) - accuracy) > 1e-4:
            raise DataError(f"{files[0]}: {right} of {len(records)} records are correct ({right / len(records):.3f}), "
                            f"but {metrics} gives the accuracy {accuracy:.3f}; these records are not that test's "
                            "(keep the files of one test together)")
    return len(records)


def _padding(repeated: int) -> str:
    return (f"{repeated} record{'s' if repeated > 1 else ''} of a problem another process had evaluated (the "
            "distributed sampler pads the processes' shares) counted once")


def test_rows(run: Path, label: str | None = None, test: ChosenTest | None = None,
              notes: Notes | None = None) -> list[Row]:
    """The rows of a run's test (``test``, by default :func:`chosen_test`): one per dataset and protocol."""
    label = label or run.name
    test = test or chosen_test(run)
    notes = notes if notes is not None else []
    rows = []
    for key, values in sorted(test.metrics.items()):
        assert test.path is not None
        n = _problem_count(records_files(test.path.parent, key), values["accuracy"], test.path, notes)
        low, high = wilson_interval(values["accuracy"] * n, n) if n else (None, None)
        dataset, protocol = split_protocol(key, test.metrics)
        method = f"{label} ({protocol})" if protocol else label
        rows.append(Row(method, dataset, n, values["accuracy"], low, high,
                        *(values[c] for c in COLUMNS[1:])))
    return rows


@dataclass
class StateSummary:
    """One controller state at the end of training."""

    controller: str
    state: str
    visits: int
    avg_regret: float
    bound: float
    slope: float | None
    avg_p: float | None
    avg_p_change: float | None
    p: float | None
    action: str = ""  # the seat's speaking action, whose probabilities these are (refresh, speak, ...)


def controller_summary(log: Sequence[dict[str, float]]) -> list[StateSummary]:
    """The last logged value of every controller state, with the bound at its visits and its regret slope."""
    regret = state_series(log, "avg_regret")
    actions = speaking_actions(log)  # the seats of the run, with their speaking actions
    probabilities = {quantity: state_series(log, quantity) for action in set(actions.values())
                     for quantity in (average_speaking_rate(action), speaking_rate(action))}

    def last(quantity: str, key: tuple[str, str]) -> float | None:
        series = probabilities.get(quantity, {}).get(key)
        return series[-1][2] if series else None

    def last_quarter_change(quantity: str, key: tuple[str, str]) -> float | None:
        """The value at the end minus the value at 3/4 of the training steps (how far it still moves)."""
        series = probabilities.get(quantity, {}).get(key)
        if not series:
            return None
        before = [value for step, _, value in series if step <= 0.75 * series[-1][0]]
        return series[-1][2] - before[-1] if before else None

    batch = bound_batch(log)
    summary = []
    for key, points in sorted(regret.items()):
        visits = int(points[-1][1]) if not math.isnan(points[-1][1]) else 0
        action = actions.get(key[0], "")
        summary.append(StateSummary(
            controller=key[0], state=key[1], visits=visits, avg_regret=points[-1][2],
            bound=average_regret_bound(visits, batch) if visits else float("inf"),
            slope=regret_slope([(m, r) for _, m, r in points]),
            avg_p=last(average_speaking_rate(action), key),
            avg_p_change=last_quarter_change(average_speaking_rate(action), key),
            p=last(speaking_rate(action), key), action=action))
    return summary


@dataclass
class Paired:
    """One run against the reference run on the same problems of one dataset."""

    method: str
    reference: str
    dataset: str
    problems: int
    accuracy: float
    reference_accuracy: float
    difference: float
    diff_low: float
    diff_high: float
    only_method_right: int
    only_reference_right: int
    p_value: float


def correctness(run: Path, grade: Callable[[dict], bool] | None = None, notes: Notes | None = None
                ) -> dict[str, dict[str, bool]]:
    """Per dataset key (``<dataset>`` or ``<dataset>@<protocol>``) of the chosen test: ``uid -> correct``.

    The test is the one :func:`chosen_test` picks (its directory's records). ``grade`` judges a record instead of
    its ``correct`` field (a stricter reading of the same records). A record needs a ``uid`` (a string or an
    integer) and a ``correct`` that is ``true`` or ``false``; the files of several processes are joined, a
    problem repeated by the distributed sampler's padding kept once (and noted in ``notes``).
    """
    test = chosen_test(run)
    path = test.path
    if path is None:
        return {}
    names = [entry.name for entry in path.parent.iterdir() if fnmatch.fnmatchcase(entry.name, "test_records_*.jsonl")]
    keys = sorted({_records_key(name, test.metrics) for name in names})
    found = {}
    for key in keys:
        paths = records_files(path.parent, key)
        outcome: dict[Any, bool] = {}
        repeated = 0
        for records in paths:
            mine: set[Any] = set()
            for number, row in read_jsonl(records):
                uid, correct = row.get("uid"), row.get("correct")
                if not isinstance(uid, (str, int)) or isinstance(uid, bool):
                    raise DataError(f"{records}, line {number}: expected a JSON record with 'uid' (a string or an "
                                    f"integer) and 'correct', found uid {json.dumps(uid)[:40]}")
                if grade is None and not isinstance(correct, bool):
                    raise DataError(f"{records}, line {number}: expected a JSON record with 'uid' and 'correct' "
                                    f"(true or false), found correct {json.dumps(correct)[:40]}")
                if uid in mine:
                    raise DataError(f"{records}, line {number}: problem id {uid!r} appears twice; a paired "
                                    "comparison needs one record per problem (give the rows distinct ids, e.g. "
                                    "--data.field_map uid)")
                mine.add(uid)
                if uid in outcome:
                    repeated += 1
                    continue
                outcome[uid] = correct if grade is None else bool(grade(row))
        if repeated and notes is not None:
            notes.append((paths[0].parent, _padding(repeated)))
        found[key] = outcome
    return found


def paired_rows(runs: Sequence[Path], reference: Path, labels: dict[Path, str] | None = None,
                notes: dict[Path, Notes] | None = None) -> list[Paired]:
    """Every run but ``reference`` against it, per shared dataset key, on the problems both answered.

    What reading the records skipped is added to ``notes`` under each run.
    """
    labels = labels or {run: run.name for run in [*runs, reference]}
    mine = correctness(reference, notes=(notes or {}).get(reference))
    if not mine:
        raise DataError(f"{reference}: no test_records_<dataset>.jsonl to pair against (run tracer-pl test first)")
    rows = []
    for run in runs:
        if run.resolve() == reference.resolve():
            continue
        outcomes = correctness(run, notes=(notes or {}).get(run))
        for key, theirs in sorted(outcomes.items()):
            base, protocol = split_protocol(key, outcomes)
            ref = mine.get(key) or mine.get(base)
            shared = sorted(ref.keys() & theirs.keys()) if ref else []
            if not shared:
                if notes is not None and run in notes:
                    why = "has no problem id in common with" if ref else "is not a dataset of"
                    notes[run].append((_records_of(run, key), f"{key} {why} the reference {labels[reference]}, "
                                                              "so it is not paired"))
                continue
            n = len(shared)
            b = sum(theirs[u] and not ref[u] for u in shared)
            c = sum(ref[u] and not theirs[u] for u in shared)
            low, high = paired_difference_interval(b, c, n)
            rows.append(Paired(
                method=f"{labels[run]} ({protocol})" if protocol else labels[run], reference=labels[reference],
                dataset=base, problems=n, accuracy=sum(theirs[u] for u in shared) / n,
                reference_accuracy=sum(ref[u] for u in shared) / n, difference=(b - c) / n,
                diff_low=low, diff_high=high,
                only_method_right=b, only_reference_right=c, p_value=mcnemar_p(b, c)))
    return rows


def _records_of(run: Path, key: str) -> Path:
    """The records file (or directory of files) a dataset key of a run's chosen test was read from."""
    path = chosen_test(run).path
    files = records_files(path.parent, key) if path is not None else []
    return files[0] if len(files) == 1 else files[0].parent if files else run


# ---------------------------------------------------------------------- writing
def _markdown(header: Sequence[str], align: str, cells: Sequence[Sequence[str]]) -> str:
    """A Markdown table; ``align`` has one letter per column, ``l`` or ``r``."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def _number(value: float | None, spec: str = ".3f") -> str:
    return "—" if value is None else format(value, spec)


def markdown_table(rows: Sequence[Row]) -> str:
    """The rows as a Markdown table."""
    header = ("method", "dataset", "problems", "accuracy (95% CI)", "tokens/problem", "calls/problem", "correction",
              "preservation")
    cells = [
        (r.method, r.dataset, str(r.problems) if r.problems is not None else "?",
         f"{r.accuracy:.3f}" + (f" ({r.ci_low:.3f}-{r.ci_high:.3f})" if r.ci_low is not None else ""),
         f"{r.tokens_per_problem:.0f}", f"{r.calls_per_problem:.1f}", f"{r.correction:.3f}", f"{r.preservation:.3f}")
        for r in rows
    ]
    return _markdown(header, "llrlrrrr", cells)


def paired_markdown(rows: Sequence[Paired]) -> str:
    """The paired comparisons as a Markdown table."""
    header = ("method", "reference", "dataset", "problems", "accuracy", "reference accuracy", "difference (95% CI)",
              "only method right", "only reference right", "McNemar p")
    cells = [
        (r.method, r.reference, r.dataset, str(r.problems), f"{r.accuracy:.3f}", f"{r.reference_accuracy:.3f}",
         f"{r.difference:+.3f} ({r.diff_low:+.3f} to {r.diff_high:+.3f})", str(r.only_method_right),
         str(r.only_reference_right), "<0.001" if r.p_value < 0.001 else f"{r.p_value:.3f}")
        for r in rows
    ]
    return _markdown(header, "lllrrrlrrr", cells)


def controller_markdown(summary: Sequence[StateSummary], batch: float = 1) -> str:
    """The controller states as a Markdown table."""
    header = ("controller", "state", "visits M", "avg regret", bound_label(batch), "log-log slope",
              "avg P(speaking action)", "its change over the last quarter", "current P")
    cells = [
        (f"{s.controller} ({s.action})" if s.action else s.controller, s.state, str(s.visits),
         f"{s.avg_regret:.4f}", f"{s.bound:.3f}", _number(s.slope, ".2f"),
         _number(s.avg_p), _number(s.avg_p_change, "+.3f"), _number(s.p))
        for s in summary
    ]
    return _markdown(header, "llrrrrrrr", cells)


def write_report(runs: Sequence[str | Path], out: str | Path, title: str = "tracer-pl report",
                 command: str | None = None, paired: str | Path | Sequence[str | Path] = ()) -> Path:
    """Write ``report.md``, ``results.json`` and the plots for ``runs`` into ``out``; return the Markdown path.

    ``paired`` names one or more of ``runs`` (path, directory name or label) to compare every other run with,
    problem by problem. Runs whose directories have the same name are labelled with their parents too
    (``a/seed1``, ``b/seed1``), so neither their rows nor their plots overwrite each other. A section "Sources"
    says which test of each run was read, and what was skipped (a newer test that ran nothing or was damaged, a
    line a killed run left incomplete, problems repeated by a multi-process test's padding).

    Raises:
        DataError: one line naming the file (and line or field) for anything that cannot be reported.
    """
    try:
        return _write_report(runs, out, title, command, paired)
    except DataError as error:
        raise DataError(one_line(str(error))) from None


def _write_report(runs: Sequence[str | Path], out: str | Path, title: str, command: str | None,
                  paired: str | Path | Sequence[str | Path]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    run_paths = [Path(r) for r in runs]
    for run in run_paths:
        if not run.is_dir():
            raise DataError(f"{run}: not a directory (expected a run directory of tracer-pl fit/test)")
    labels = run_labels(run_paths)
    notes: dict[Path, Notes] = {run: [] for run in run_paths}
    tests = {run: chosen_test(run) for run in run_paths}
    rows = [row for run in run_paths for row in test_rows(run, labels[run], tests[run], notes[run])]
    logs = {run: training_log(run, notes[run]) for run in run_paths}
    if not rows and not any(logs.values()):
        raise DataError(f"no test_metrics.json with test metrics and no training metrics.csv under "
                        f"{', '.join(map(str, run_paths))}" + _empty_tests(tests))
    references = [_reference(name, run_paths, labels)
                  for name in ([paired] if isinstance(paired, (str, Path)) else paired)]
    out = _output_directory(Path(out))
    _check_outputs(out, ["report.md", "results.json", "paired.json", "accuracy_vs_tokens.png"]
                   + [f"{label.replace('/', '__')}_{kind}.png" for label in labels.values()
                      for kind in ("regret", "speak_rates")])
    sections = [f"# {title}", ""]
    if command:
        sections += ["Produced by:", "", "```bash", command, "```", ""]
    if rows:
        sections += ["## Results", "", markdown_table(rows), ""]
        _save(out / "accuracy_vs_tokens.png", lambda path: plot_accuracy_vs_tokens(rows, path))
        sections += ["![accuracy against tokens per problem](accuracy_vs_tokens.png)", ""]
    pairs = []
    for reference in references:
        mine = paired_rows(run_paths, reference, labels, notes)
        pairs += mine
        sections += [f"## Paired against {labels[reference]}", "",
                     "Problem by problem on the same held-out set: the difference of accuracies (method minus "
                     "reference) with a 95% Bonett-Price interval, and the exact McNemar test on the problems "
                     "only one of the two got right.", "", paired_markdown(mine), ""]
    sections += _sources_section(run_paths, labels, tests, logs, notes)
    for run, log in logs.items():
        if log:
            sections += _training_section(run, labels[run], log, out)
    _write(out / "results.json", json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    if pairs:
        _write(out / "paired.json", json.dumps([asdict(p) for p in pairs], indent=2) + "\n")
    path = out / "report.md"
    _write(path, "\n".join(sections))
    return path


def _empty_tests(tests: dict[Path, ChosenTest]) -> str:
    """What the error of a report with nothing to show adds about tests that ran nothing."""
    empty = [str(test.path) for test in tests.values() if test.path is not None]
    return f" ({', '.join(empty)}: no test metrics; the test ran no batch, or was interrupted)" if empty else ""


def _sources_section(runs: Sequence[Path], labels: dict[Path, str], tests: dict[Path, ChosenTest],
                     logs: dict[Path, list[dict[str, float]]], notes: dict[Path, Notes]) -> list[str]:
    """Which test of each run was read, and everything skipped on the way (newer tests, incomplete lines)."""
    lines = []
    for run in runs:
        test, label = tests[run], labels[run]
        if test.metrics and test.path is not None:
            newest = " (the newest complete test)" if test.skipped else ""
            lines.append(f"- {label}: test results from `{_relative(test.path, run)}`{newest}")
        elif logs[run]:
            lines.append(f"- {label}: no test results (training only)")
        else:
            lines.append(f"- {label}: nothing to report (no test metrics, no training log)")
        lines += [f"  - skipped `{_relative(path, run)}`: {reason}" for path, reason in test.skipped]
        lines += [f"  - `{_relative(path, run)}`: {text}" for path, text in dict.fromkeys(notes[run])]
    return ["## Sources", "", *lines, ""]


def _relative(path: Path, run: Path) -> str:
    try:
        return str(path.relative_to(run))
    except ValueError:
        return str(path)


def one_line(text: str) -> str:
    """``text`` on one line: characters that are not printable (a newline in a file name) escaped."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _reference(name: str | Path, runs: Sequence[Path], labels: dict[Path, str]) -> Path:
    """The run ``--paired name`` means: a path, a label, or a directory name that only one run has."""
    found = [r for r in runs if str(name) in (str(r), labels[r])] or [r for r in runs if str(name) == r.name]
    if not found:
        raise DataError(f"--paired {name}: not one of the run directories ({', '.join(labels.values())})")
    if len(found) > 1:
        raise DataError(f"--paired {name}: several runs are named so ({', '.join(labels[r] for r in found)}); "
                        "give one of these labels or its path")
    return found[0]


def _output_directory(out: Path) -> Path:
    """``out``, created, or a DataError saying why it cannot be used (a file, no permission)."""
    mode = stat_mode(out)
    if mode is not None and not stat.S_ISDIR(mode):
        what = "a file" if stat.S_ISREG(mode) else file_kind(mode)
        raise DataError(f"--out {out}: is {what}, not a directory; choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test"):
            pass
    except OSError as error:
        raise DataError(f"--out {out}: cannot write the report there ({error.strerror or error})") from None
    return out


def _check_outputs(out: Path, names: Sequence[str]) -> None:
    """Refuse, before anything is written, an output name taken by a directory (it cannot be replaced)."""
    for name in names:
        if (out / name).is_dir() and not (out / name).is_symlink():
            raise DataError(f"--out {out}: {name} is a directory there; remove it or choose another --out")


def _write(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all: a temporary file beside it, renamed over it.

    Whatever stood at ``path`` (an older report, a named pipe that would block a plain write, a link) is replaced,
    never written through.
    """
    _save(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def _save(path: Path, write: Callable[[Path], Any]) -> Any:
    """Call ``write`` on a temporary path beside ``path`` (same suffix), then rename it to ``path``.

    A ``write`` that returns False wrote nothing (a plot with nothing to draw): ``path`` is left alone.
    """
    temporary = path.parent / f".{path.stem}.{os.getpid()}.{secrets.token_hex(4)}{path.suffix}"
    try:
        os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # the mode a plain write gives
    except OSError as error:
        raise DataError(f"--out {path.parent}: cannot write {path.name} there ({error.strerror or error})") from None
    try:
        result = write(temporary)
        if result is not False:
            os.replace(temporary, path)
        return result
    except OSError as error:
        raise DataError(f"--out {path.parent}: cannot write {path.name} there ({error.strerror or error})") from None
    finally:
        temporary.unlink(missing_ok=True)


def _training_section(run: Path, label: str, log: Sequence[dict[str, float]], out: Path) -> list[str]:
    """The plots and the controller table of one run, saying whether its training finished."""
    stem = label.replace("/", "__")
    plots = [(f"{stem}_regret.png", plot_regret), (f"{stem}_speak_rates.png", plot_speak_rates)]
    drawn = [name for name, plot in plots if _save(out / name, lambda path, plot=plot: plot(log, label, path))]
    section = [f"## Training: {label}", ""] + [f"![{name}]({name})" for name in drawn] + [""] if drawn else []
    summary = controller_summary(log)
    if summary:
        log_path = training_log_path(run)
        status = fit_status(log_path.parent) if log_path is not None else "unfinished"
        when = {"finished": "at the end of training",
                "preempted": "when the run was preempted (SIGTERM; it can be resumed)"}.get(
            status, "at the last logged step: the run did not finish (crashed, killed or still running)")
        section += [f"Controller states of {label} {when}:", "", controller_markdown(summary, bound_batch(log)), ""]
    return section


def main(argv: Sequence[str] | None = None) -> None:
    """``tracer-pl report RUN_DIR ... [--out DIR] [--title T] [--command C]``."""
    parser = argparse.ArgumentParser(
        prog="tracer-pl report",
        description="Markdown table and PNG plots (accuracy vs tokens, regret convergence, speak rates) "
                    "for run directories of tracer-pl fit/test.",
    )
    parser.add_argument("runs", nargs="+", help="run directories (--trainer.default_root_dir of each run)")
    parser.add_argument("--out", default="report", help="output directory (default: report)")
    parser.add_argument("--title", default="tracer-pl report", help="title of report.md")
    parser.add_argument("--command", default=None, help="the command that produced the runs, quoted in report.md")
    parser.add_argument("--paired", action="append", default=[], metavar="RUN",
                        help="compare every other run with this one problem by problem (McNemar test); repeatable")
    args = parser.parse_args(argv)
    path = write_report(args.runs, args.out, title=args.title, command=args.command, paired=args.paired)
    print(path.read_text().split("## Training", 1)[0].rstrip())
    print(f"\nreport: {path}")
