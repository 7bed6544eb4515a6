"""Finding and reading a run's files: the newest of a kind, the training log of a fit (resumed or not), how it ended.

A run directory is a ``--trainer.default_root_dir``. Each ``tracer-pl fit`` or ``tracer-pl test`` in it writes a
new version directory of the CSV logger (``<run>/logs/version_N/``), so a fit resumed with ``--ckpt_path`` logs
the steps after its checkpoint to a version of its own; :func:`training_log` joins them back into one log. A run
evaluated from Python without a logger (:func:`tracer_pl.training.evaluation.evaluate`) has its files directly in
the run directory.

Every file is read through :func:`read_text`: only a regular file is opened (a named pipe, a socket or a device
would block the report or never end), and it must be UTF-8. Every problem is a one-line :class:`DataError` naming
the file (and the line); what a killed process leaves behind -- the incomplete last line of a ``metrics.csv`` --
is skipped and described in a note instead.
"""

from __future__ import annotations

import csv
import errno
import fnmatch
import io
import json
import math
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tracer_pl.errors import DataError

Notes = list[tuple[Path, str]]
"""What a reading skipped, for the report to say: the file (or directory) concerned, and what and why."""


# ---------------------------------------------------------------------- reading one file
def file_kind(mode: int) -> str:
    """What a file that is not a regular file is, in words (``a named pipe (FIFO)``, ``a directory``, ...)."""
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def read_bytes(path: Path) -> bytes:
    """The content of ``path`` if it is a regular file (symbolic links followed), else a one-line DataError.

    The file is opened without blocking and checked on the open descriptor, so a named pipe put in its place
    between a check and the read never blocks the reader.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as error:
        raise DataError(f"{path}: cannot read it ({_reason(path, error)})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise DataError(f"{path}: is {file_kind(mode)}, not a file; remove it or report another run directory")
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as error:
        raise DataError(f"{path}: cannot read it ({error.strerror or error})") from None
    finally:
        os.close(fd)


def _reason(path: Path, error: OSError) -> str:
    """Why ``path`` could not be opened, in words."""
    if error.errno == errno.ELOOP:
        return "a symbolic link loop"
    if path.is_symlink() and isinstance(error, FileNotFoundError):
        return f"a broken symbolic link to {os.readlink(path)}"
    if isinstance(error, FileNotFoundError):
        return "no such file"
    mode = stat_mode(path)
    if mode is not None and not stat.S_ISREG(mode):
        return f"it is {file_kind(mode)}, not a file"
    return error.strerror or str(error)


def stat_mode(path: Path) -> int | None:
    """The mode of ``path`` (symbolic links followed), None when it cannot be found."""
    try:
        return path.stat().st_mode
    except OSError:
        return None


def read_text(path: Path) -> str:
    """:func:`read_bytes` decoded as UTF-8; a byte that is not is named with its line."""
    data = read_bytes(path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise DataError(f"{path}, line {line}: not UTF-8 text (byte 0x{data[error.start]:02x}); the report reads "
                        "the files tracer-pl writes, which are UTF-8") from None


def parse_json(text: str, where: str) -> Any:
    """``json.loads(text)`` with a one-line DataError naming ``where`` for anything that is not JSON."""
    try:
        return json.loads(text)
    except RecursionError:
        raise DataError(f"{where}: not valid JSON (nested too deeply)") from None
    except ValueError as error:  # JSONDecodeError, and integers too long to convert
        reason = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
        raise DataError(f"{where}: not valid JSON ({reason})") from None


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type (``null``, ``a list``, ``a string``, ...), for messages."""
    names = {type(None): "null", bool: "a boolean", list: "a list", dict: "an object", str: "a string"}
    return names.get(type(value), "a number")


def read_json(path: Path) -> Any:
    """The JSON value held by the file ``path`` (see :func:`read_text`, :func:`parse_json`)."""
    return parse_json(read_text(path), str(path))


def read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for every non-blank line of a JSONL file; each line must be a JSON object."""
    rows = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        row = parse_json(line, f"{path}, line {number}")
        if not isinstance(row, dict):
            raise DataError(f"{path}, line {number}: expected a JSON object (one record per line), found "
                            f"{json_type(row)}")
        rows.append((number, row))
    return rows


# ---------------------------------------------------------------------- finding files
def _logger_directory(directory: Path, path: Path) -> str | None:
    """The logger directory ``path`` was written under, relative to ``directory``; None directly in it."""
    if path.parent == directory:
        return None
    return str(path.parent.parent.relative_to(directory))


def _modified(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # a broken link or a loop: sorted first, and refused by name when read
        return -math.inf


def _natural(path: Path) -> list[Any]:
    """A sort key reading the numbers in a path as numbers (``version_10`` after ``version_9``)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


LINKED_DEPTH = 3
"""How deep the search goes below a linked directory: a logger's directory, its version directories, their files."""


def find(directory: Path, pattern: str) -> list[Path]:
    """Every entry under ``directory`` whose name matches ``pattern``, whatever it is (a broken link too).

    Linked directories are followed (a run's ``logs`` may live on another disk), each real directory once, so a
    link loop ends, and only :data:`LINKED_DEPTH` levels below the link, so a link to ``/`` is no walk of the
    whole disk. Entries that match are returned, not entered: reading one that is not a file is refused by name
    (:func:`read_bytes`), never skipped in silence.
    """
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()
    stack: list[tuple[Path, float]] = [(directory, math.inf)]  # a directory, and how deep below it to look
    while stack:
        current, depth = stack.pop()
        try:
            info = current.stat()
        except OSError:  # a broken link or a link loop among the directories: nothing under it
            continue
        if (info.st_dev, info.st_ino) in seen or depth <= 0:
            continue
        seen.add((info.st_dev, info.st_ino))
        try:
            entries = sorted(os.scandir(current), key=lambda entry: entry.name)
        except OSError as error:
            raise DataError(f"{current}: cannot list it ({error.strerror or error})") from None
        for entry in entries:
            if fnmatch.fnmatchcase(entry.name, pattern):
                found.append(Path(entry.path))
            elif _is_directory(entry):
                below = min(depth, LINKED_DEPTH) if entry.is_symlink() else depth
                stack.append((Path(entry.path), below - 1 if below != math.inf else below))
    return found


def _is_directory(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def of_one_run(directory: Path, pattern: str, keep: Callable[[Path], bool] = lambda path: True) -> list[Path]:
    """The files matching ``pattern`` under ``directory`` (and ``keep``), oldest first, from one run only.

    The files of one run sit in the version directories of one logger (or directly in ``directory``, written
    without a logger); files under several loggers' directories mean ``directory`` holds several runs. Files
    modified at the same time are ordered by their path, version numbers read as numbers.

    Raises:
        DataError: when ``directory`` holds files of several runs (name them one by one instead).
    """
    candidates = sorted(find(directory, pattern), key=lambda p: (_modified(p), _natural(p)))
    found = [p for p in candidates if keep(p)]
    loggers = sorted({logger for p in found if (logger := _logger_directory(directory, p)) is not None})
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
    its adapters, which happens only at the end of training. A status file that cannot be read counts as
    unfinished (the report then says the run did not finish, never that it did).
    """
    status = log_dir / "fit_status.json"
    if status.is_symlink() or status.exists():
        try:
            value = read_json(status)
            return str(value["status"]) if isinstance(value, dict) and "status" in value else "unfinished"
        except DataError:
            return "unfinished"
    return "finished" if (log_dir / "adapters").is_dir() else "unfinished"


# ---------------------------------------------------------------------- the training log
def training_log(run: Path, notes: Notes | None = None) -> list[dict[str, float]]:
    """The run's training rows (one per step, as floats), its ``metrics.csv`` files joined in step order.

    Files are taken oldest first; each one replaces the rows of the older ones from its own first step on. A fit
    resumed from a checkpoint thus keeps the steps before the checkpoint from the interrupted fit and everything
    after from the resumed one (steps the interrupted fit logged past its checkpoint were run again), and a fit
    started afresh in the same directory replaces the older log whole. What was skipped (the incomplete last line
    of a killed run's file) is appended to ``notes``.
    """
    rows: list[dict[str, float]] = []
    for path in of_one_run(run, "metrics.csv"):
        newer = _training_rows(path, notes)
        if newer:
            first = min(row["step"] for row in newer)
            rows = [row for row in rows if row["step"] < first] + newer
    return rows


def training_log_path(run: Path) -> Path | None:
    """The run's newest ``metrics.csv`` with training rows: the directory of the fit that ran last."""
    return newest(run, "metrics.csv", keep=lambda path: bool(_training_rows(path)))


def _training_rows(path: Path, notes: Notes | None = None) -> list[dict[str, float]]:
    """The training rows of one ``metrics.csv`` (``CSVLogger``), checked.

    Every row must hold as many fields as the header, each a number or empty, with a finite ``step``. The logger
    ends every row with a line break, so a last line without one was cut off by a killed process: it is skipped
    and a note says so.
    """
    text = read_text(path)
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith(("\n", "\r")):
        if notes is not None:
            notes.append((path, f"skipped its last line ({len(lines)}), cut off while it was written (the process "
                                "was killed)"))
        text = "".join(lines[:-1])
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            return []
        table = [(reader.line_num, fields) for fields in reader]
    except csv.Error as error:
        raise DataError(f"{path}, line {reader.line_num}: not a row of a CSV log ({error})") from None
    rows = []
    for number, fields in table:
        if not fields:
            continue
        if len(fields) != len(header):
            raise DataError(f"{path}, line {number}: {len(fields)} fields where the header has {len(header)}; "
                            "the file is damaged (a metrics.csv of tracer-pl has as many in every row)")
        values = {}
        for key, value in zip(header, fields):
            if value == "" or not key:
                continue
            try:
                values[key] = float(value)
            except ValueError:
                raise DataError(f"{path}, line {number}: expected numbers in every column of a metrics.csv row, "
                                f"found {value[:40]!r} in column {key!r}") from None
        if any(k.startswith(("train/", "controller/")) for k in values):
            if not math.isfinite(values.get("step", math.nan)):
                found = "no 'step' column" if "step" not in header else f"step {fields[header.index('step')]!r}"
                raise DataError(f"{path}, line {number}: a training row needs a finite step, found {found}")
            rows.append(values)
    return rows
