"""Finding a run's files: the newest of a kind, the training log of a fit (resumed or not), and how the fit ended.

A run directory is a ``--trainer.default_root_dir``. Each ``tracer-pl fit`` or ``tracer-pl test`` in it writes a
new version directory of the CSV logger (``<run>/logs/version_N/``), so a fit resumed with ``--ckpt_path`` logs
the steps after its checkpoint to a version of its own; :func:`training_log` joins them back into one log.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

from tracer_pl.errors import DataError


def of_one_run(directory: Path, pattern: str, keep: Callable[[Path], bool] = lambda path: True) -> list[Path]:
    """The files matching ``pattern`` under ``directory`` (and ``keep``), oldest first, from one run only.

    The files of one run sit in the version directories of one logger; files under several loggers' directories
    mean ``directory`` holds several runs.

    Raises:
        DataError: when ``directory`` holds files of several runs (name them one by one instead).
    """
    found = sorted((p for p in directory.rglob(pattern) if keep(p)), key=lambda p: p.stat().st_mtime)
    loggers = sorted({str(p.parent.parent.relative_to(directory)) for p in found})
    if len(loggers) > 1:
        raise DataError(f"{directory}: holds {pattern} of several runs (under {', '.join(loggers)}); give each run's "
                        "directory to tracer-pl report instead")
    return found


def newest(directory: Path, pattern: str, keep: Callable[[Path], bool] = lambda path: True) -> Path | None:
    """The most recently modified file matching ``pattern`` under ``directory`` (see :func:`of_one_run`)."""
    found = of_one_run(directory, pattern, keep)
    return found[-1] if found else None


def fit_status(log_dir: Path) -> str:
    """``finished``, ``preempted`` or ``unfinished`` (crashed, killed or still running) for a fit's log directory.

    ``tracer-pl fit`` writes ``fit_status.json``; a run trained without it counts as finished when it exported
    its adapters, which happens only at the end of training.
    """
    status = log_dir / "fit_status.json"
    if status.is_file():
        try:
            return str(json.loads(status.read_text())["status"])
        except (json.JSONDecodeError, KeyError, TypeError):
            return "unfinished"
    return "finished" if (log_dir / "adapters").is_dir() else "unfinished"


def training_log(run: Path) -> list[dict[str, float]]:
    """The run's training rows (one per step, as floats), its ``metrics.csv`` files joined in step order.

    Files are taken oldest first; each one replaces the rows of the older ones from its own first step on. A fit
    resumed from a checkpoint thus keeps the steps before the checkpoint from the interrupted fit and everything
    after from the resumed one (steps the interrupted fit logged past its checkpoint were run again), and a fit
    started afresh in the same directory replaces the older log whole.
    """
    rows: list[dict[str, float]] = []
    for path in of_one_run(run, "metrics.csv"):
        newer = _training_rows(path)
        if newer:
            first = min(row.get("step", 0.0) for row in newer)
            rows = [row for row in rows if row.get("step", 0.0) < first] + newer
    return rows


def training_log_path(run: Path) -> Path | None:
    """The run's newest ``metrics.csv`` with training rows: the directory of the fit that ran last."""
    return newest(run, "metrics.csv", keep=lambda path: bool(_training_rows(path)))


def _training_rows(path: Path) -> list[dict[str, float]]:
    rows = []
    with path.open(newline="") as handle:
        for number, row in enumerate(csv.DictReader(handle), start=2):
            try:
                values = {k: float(v) for k, v in row.items() if v not in ("", None)}
            except (TypeError, ValueError):
                raise DataError(f"{path}, line {number}: expected numbers in every column of a metrics.csv row, "
                                f"found {dict(list(row.items())[:4])!r}") from None
            if any(k.startswith(("train/", "controller/")) for k in values if k):
                rows.append(values)
    return rows
