"""``tracer-pl report``: one Markdown table and PNG plots for any set of run directories.

A run directory is a ``--trainer.default_root_dir`` of ``tracer-pl fit`` and/or ``tracer-pl test``. The report
reads, from each one,

* the newest ``test_metrics.json`` (written by ``tracer-pl test``) and the ``test_records_<dataset>.jsonl``
  beside it (the number of problems);
* the training rows of its ``metrics.csv`` files (``CSVLogger``; a resumed fit's files joined), for the regret
  and speak-rate plots fed by :class:`~tracer_pl.training.callbacks.ControllerMonitor`.

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
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from tracer_pl.errors import DataError
from tracer_pl.keys import average_speaking_rate, speaking_rate
from tracer_pl.reporting.controller_log import bound_batch, bound_label, speaking_actions, state_series
from tracer_pl.reporting.plots import plot_accuracy_vs_tokens, plot_regret, plot_speak_rates
from tracer_pl.reporting.rows import Row
from tracer_pl.reporting.run_files import fit_status, newest, training_log, training_log_path
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


def test_rows(run: Path, label: str | None = None) -> list[Row]:
    """The rows of a run's newest ``test_metrics.json`` (one per dataset, and per extra protocol)."""
    label = label or run.name
    path = newest(run, "test_metrics.json")
    if path is None:
        return []
    try:
        metrics = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON ({error})") from None
    by_dataset: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "test":
            by_dataset.setdefault(parts[1], {})[parts[2]] = float(value)
    rows = []
    for dataset, values in sorted(by_dataset.items()):
        missing = [c for c in COLUMNS if c not in values]
        if missing:
            raise DataError(f"{path}: dataset {dataset!r} lacks the metrics {missing}")
        records = path.parent / f"test_records_{dataset}.jsonl"
        n = sum(1 for line in records.open() if line.strip()) if records.exists() else None
        low, high = wilson_interval(values["accuracy"] * n, n) if n else (None, None)
        base, _, protocol = dataset.partition("@")
        method = f"{label} ({protocol})" if protocol else label
        rows.append(Row(method, base, n, values["accuracy"], low, high,
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


def correctness(run: Path, grade: Callable[[dict], bool] | None = None) -> dict[str, dict[str, bool]]:
    """Per dataset key (``<dataset>`` or ``<dataset>@<protocol>``) of the newest test: ``uid -> correct``.

    ``grade`` judges a record instead of its ``correct`` field (a stricter reading of the same records).
    """
    path = newest(run, "test_metrics.json")
    if path is None:
        return {}
    found = {}
    for records in sorted(path.parent.glob("test_records_*.jsonl")):
        outcome: dict[str, bool] = {}
        for number, line in enumerate(records.open(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                uid, correct = row["uid"], bool(row["correct"]) if grade is None else grade(row)
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise DataError(f"{records}, line {number}: expected a JSON record with 'uid' and 'correct' "
                                f"({error!r})") from None
            if uid in outcome:
                raise DataError(f"{records}, line {number}: problem id {uid!r} appears twice; a paired comparison "
                                "needs one record per problem (give the rows distinct ids, e.g. --data.field_map uid)")
            outcome[uid] = correct
        found[records.name.removeprefix("test_records_").removesuffix(".jsonl")] = outcome
    return found


def paired_rows(runs: Sequence[Path], reference: Path, labels: dict[Path, str] | None = None) -> list[Paired]:
    """Every run but ``reference`` against it, per shared dataset key, on the problems both answered."""
    labels = labels or {run: run.name for run in [*runs, reference]}
    mine = correctness(reference)
    if not mine:
        raise DataError(f"{reference}: no test_records_<dataset>.jsonl to pair against (run tracer-pl test first)")
    rows = []
    for run in runs:
        if run.resolve() == reference.resolve():
            continue
        for key, theirs in sorted(correctness(run).items()):
            ref = mine.get(key) or mine.get(key.partition("@")[0])
            shared = sorted(ref.keys() & theirs.keys()) if ref else []
            if not shared:
                continue
            n = len(shared)
            b = sum(theirs[u] and not ref[u] for u in shared)
            c = sum(ref[u] and not theirs[u] for u in shared)
            low, high = paired_difference_interval(b, c, n)
            base, _, protocol = key.partition("@")
            rows.append(Paired(
                method=f"{labels[run]} ({protocol})" if protocol else labels[run], reference=labels[reference],
                dataset=base, problems=n, accuracy=sum(theirs[u] for u in shared) / n,
                reference_accuracy=sum(ref[u] for u in shared) / n, difference=(b - c) / n,
                diff_low=low, diff_high=high,
                only_method_right=b, only_reference_right=c, p_value=mcnemar_p(b, c)))
    return rows


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
    (``a/seed1``, ``b/seed1``), so neither their rows nor their plots overwrite each other.
    """
    import matplotlib

    matplotlib.use("Agg")
    run_paths = [Path(r) for r in runs]
    for run in run_paths:
        if not run.is_dir():
            raise DataError(f"{run}: not a directory (expected a run directory of tracer-pl fit/test)")
    labels = run_labels(run_paths)
    rows = [row for run in run_paths for row in test_rows(run, labels[run])]
    logs = {run: training_log(run) for run in run_paths}
    if not rows and not any(logs.values()):
        raise DataError(f"no test_metrics.json and no training metrics.csv under {', '.join(map(str, run_paths))}")
    references = [_reference(name, run_paths, labels)
                  for name in ([paired] if isinstance(paired, (str, Path)) else paired)]
    out = _output_directory(Path(out))
    sections = [f"# {title}", ""]
    if command:
        sections += ["Produced by:", "", "```bash", command, "```", ""]
    if rows:
        sections += ["## Results", "", markdown_table(rows), ""]
        plot_accuracy_vs_tokens(rows, out / "accuracy_vs_tokens.png")
        sections += ["![accuracy against tokens per problem](accuracy_vs_tokens.png)", ""]
    pairs = []
    for reference in references:
        mine = paired_rows(run_paths, reference, labels)
        pairs += mine
        sections += [f"## Paired against {labels[reference]}", "",
                     "Problem by problem on the same held-out set: the difference of accuracies (method minus "
                     "reference) with a 95% Bonett-Price interval, and the exact McNemar test on the problems "
                     "only one of the two got right.", "", paired_markdown(mine), ""]
    for run, log in logs.items():
        if log:
            sections += _training_section(run, labels[run], log, out)
    (out / "results.json").write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    if pairs:
        (out / "paired.json").write_text(json.dumps([asdict(p) for p in pairs], indent=2) + "\n")
    path = out / "report.md"
    path.write_text("\n".join(sections))
    return path


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
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise DataError(f"--out {out}: cannot write the report there ({error.strerror or error})") from None
    return out


def _training_section(run: Path, label: str, log: Sequence[dict[str, float]], out: Path) -> list[str]:
    """The plots and the controller table of one run, saying whether its training finished."""
    stem = label.replace("/", "__")
    plots = [(f"{stem}_regret.png", plot_regret), (f"{stem}_speak_rates.png", plot_speak_rates)]
    drawn = [name for name, plot in plots if plot(log, label, out / name)]
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
