"""Data sources: one string names where problems come from.

* a benchmark: ``gsm8k`` (``openai/gsm8k``, config ``main``), ``math500`` (``HuggingFaceH4/MATH-500``),
  ``gpqa_diamond`` (``Idavidrein/gpqa``, config ``gpqa_diamond``; gated), from the Hugging Face hub;
* any other dataset on the hub, by its ``owner/name`` id, with optional ``?config=<name>&split=<name>&revision=<ref>``
  (e.g. ``openai/gsm8k?config=main``), read with ``datasets.load_dataset``. Without ``split`` the requested split
  (``train`` or ``test``) is used, or the only one there is;
* a local file: ``*.jsonl`` (one object per line), ``*.json`` (a list of objects, or ``{"data": [...]}``),
  ``*.parquet``, ``*.csv``/``*.tsv`` (every cell read as text) or ``*.arrow``; or a local directory: one saved
  with ``Dataset.save_to_disk`` or holding data files as a hub repository does (``?split=<name>`` chooses among its
  splits). JSONL is read line by line here, so that every error names its line and a broken line (invalid JSON, a
  byte that is not UTF-8) is one bad row; JSON is read here too. Both keep every number exactly as written
  (``0.00005``, ``12345678901234567890``). Everything else goes through ``datasets`` (``load_dataset``, or
  ``load_from_disk`` for a saved dataset, which ``load_dataset`` refuses);
* ``reasoning_gym:<task>`` with optional ``?size=200&seed=1&<task option>=...``: problems generated offline by
  the ``reasoning-gym`` package, e.g. ``reasoning_gym:basic_arithmetic?size=500&max_terms=3&operators=+,-``
  (a comma makes a tuple). Test sets are generated with ``seed + 1_000_000``: reasoning-gym seeds item *i* with
  ``seed + i``, so no test item shares its random stream with a training item of a smaller set.

The format of files and of hub datasets other than the benchmarks is told from their first row: GSM8K-style
(``question``/``answer`` with ``####``), MATH-style (``problem``/``answer`` or ``solution``), GPQA-style, TRL-style
(``prompt``/``solution``; a ``prompt`` of chat messages gives its last user message) or plain
``question``/``gold``; other columns are mapped with ``field_map`` (keys ``question``, ``gold``, ``uid``). A gold
that is a worked solution gives its final answer: the number after ``####``, or its last box.

Every row becomes a :class:`~tracer_pl.core.problem.Problem` or a :class:`~tracer_pl.errors.DataError` naming the
source, the row (1-based line number for JSONL), the field and what was expected. With ``on_bad_row="skip"`` bad
rows are dropped and their reasons collected instead -- never turned into a wrong gold answer. A file that
``datasets`` cannot read as a whole (invalid JSON, a row that is not an object) is one error naming the file.
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from tracer_pl.core.problem import Problem
from tracer_pl.errors import ConfigError, DataError
from tracer_pl.grading.answers import format_choices, get_answer_format, gsm8k_gold, last_boxed, shuffle_choices

OnBadRow = Literal["raise", "skip"]
MAX_FIELD_CHARS = 200_000
"""A longer question or answer is a bad row: no model's context holds it, and tokenizing it is already slow."""
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".tsv", ".arrow")
DATASETS_BUILDERS = {".parquet": "parquet", ".csv": "csv", ".tsv": "csv", ".arrow": "arrow"}
"""The ``datasets`` builder that reads each local file type (JSON and JSONL are read here, their numbers exactly)."""
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
"""A dataset id on the Hugging Face hub: ``owner/name``."""
HUB_OPTIONS = ("config", "split", "revision")


@dataclass(frozen=True)
class Benchmark:
    """A benchmark on the Hugging Face hub."""

    hub_id: str
    config: str | None
    splits: tuple[str, ...]
    style: str
    gated: bool = False


BENCHMARKS = {
    "gsm8k": Benchmark("openai/gsm8k", "main", ("train", "test"), "gsm8k"),
    "math500": Benchmark("HuggingFaceH4/MATH-500", None, ("test",), "math"),
    "gpqa_diamond": Benchmark("Idavidrein/gpqa", "gpqa_diamond", ("train",), "gpqa", gated=True),
}


@dataclass
class BadRows:
    """Reasons of the rows skipped with ``on_bad_row="skip"``."""

    reasons: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.reasons)

    def summary(self, limit: int = 3) -> str:
        shown = "; ".join(self.reasons[:limit])
        more = f" (and {len(self.reasons) - limit} more)" if len(self.reasons) > limit else ""
        return f"skipped {len(self.reasons)} bad rows: {shown}{more}"


def source_name(source: str) -> str:
    """A short name for logs and metric keys: the benchmark, task or hub dataset name, or the file's stem."""
    if source in BENCHMARKS:
        return source
    if source.startswith("reasoning_gym:"):
        return source.split(":", 1)[1].split("?", 1)[0]
    path = Path(source)
    if not path.exists():
        path = Path(source.split("?", 1)[0])
    if path.is_dir() or (HUB_ID.match(str(path)) and not path.exists()):
        return path.name
    return path.stem


def load_problems(
    source: str,
    *,
    split: str = "train",
    streaming: bool = False,
    field_map: Mapping[str, str] | None = None,
    answer_format: str | None = None,
    seed: int = 42,
    on_bad_row: OnBadRow = "raise",
    bad_rows: BadRows | None = None,
) -> Iterator[Problem]:
    """Problems of ``source`` in file order (see the module docstring for the accepted forms).

    Args:
        source: A benchmark name, a hub dataset id, a local file or directory, or ``reasoning_gym:<task>[?options]``.
        split: ``train`` or ``test`` (benchmarks with one split use it for both; generated sets use another seed;
            other datasets with one split use it for both).
        streaming: Stream hub datasets instead of downloading them whole.
        field_map: Maps ``question``/``gold`` (and optionally ``uid``) to the columns that hold them.
        answer_format: Grade with this registered format instead of the detected one.
        seed: Seed of generated problems and of GPQA's option shuffles.
        on_bad_row: ``raise`` a DataError on the first bad row, or ``skip`` it and record why in ``bad_rows``.
        bad_rows: Collects the skipped rows' reasons.
    """
    if answer_format is not None:
        get_answer_format(answer_format)  # fail early on a typo
    check_field_map(field_map)
    source = os.fspath(source) if isinstance(source, os.PathLike) else source
    if not isinstance(source, str) or not source.strip():
        raise DataError(f"expected a data source (a benchmark name, a file path, a hub id or reasoning_gym:<task>), "
                        f"got {source!r}")
    convert: Converter | None = None  # detected from the first row
    if source.startswith("reasoning_gym:"):
        rows: Iterable[tuple[str, dict]] = _reasoning_gym_rows(source, split, seed)
        convert = _generated_row
    elif source in BENCHMARKS:
        rows, convert = _benchmark_rows(source, split, streaming), _converter(BENCHMARKS[source].style, field_map)
    elif _is_local(source):
        rows = _local_rows(source, split)
    elif HUB_ID.match(source.split("?", 1)[0]):
        rows = _hub_id_rows(source, split, streaming)
    else:
        raise DataError(
            f"unknown data source {source!r}: expected one of {sorted(BENCHMARKS)}, a hub dataset id (owner/name), "
            "a path to a .jsonl/.json/.parquet/.csv file or a dataset directory, or reasoning_gym:<task>"
        )
    for where, row in rows:
        try:
            if isinstance(row, DataError):
                raise row
            if convert is None:
                convert = _converter(_detect_style(row, field_map, where), field_map)
            problem = convert(row, where, seed)
            if answer_format is not None:
                problem = Problem(problem.question, get_answer_format(answer_format).parse_gold(problem.gold),
                                  answer_format, problem.uid)
        except (DataError, ValueError, TypeError, KeyError) as error:
            message = str(error) if str(error).startswith(where) else f"{where}: {error}"
            if on_bad_row == "raise":
                raise DataError(message) from None
            if bad_rows is not None:
                bad_rows.reasons.append(message)
            continue
        yield problem


FIELD_MAP_KEYS = ("question", "gold", "uid")
"""What ``field_map`` maps: the question, the gold answer and (optionally) the problem id."""


def check_field_map(field_map: Mapping[str, str] | None) -> None:
    """Refuse a ``field_map`` with a key it does not know, or a column name that is not a non-empty string.

    A misspelled key (``questoin``) would otherwise leave the default column in use, in silence.
    """
    if field_map is None:
        return
    if not isinstance(field_map, Mapping):
        raise ConfigError(f"--data.field_map must map {'/'.join(FIELD_MAP_KEYS)} to column names, got {field_map!r}")
    unknown = [key for key in field_map if key not in FIELD_MAP_KEYS]
    if unknown:
        raise ConfigError(f"--data.field_map: unknown key {unknown[0]!r}; it maps only {', '.join(FIELD_MAP_KEYS)} "
                          "to column names (e.g. {question: prompt, gold: target})")
    for key, column in field_map.items():
        if not isinstance(column, str) or not column.strip():
            raise ConfigError(f"--data.field_map: {key!r} must name a column, got {column!r}")


# ---------------------------------------------------------------------- row readers


def _is_local(source: str) -> bool:
    """Whether ``source`` names a local path: one that exists, or one that cannot be a hub id."""
    if Path(source).exists():
        return True
    base, _, _ = source.partition("?")
    if Path(base).is_dir():
        return True
    if HUB_ID.match(base) and not base.lower().endswith(LOCAL_SUFFIXES):
        return False
    return base.lower().endswith(LOCAL_SUFFIXES) or os.sep in source or bool(os.altsep and os.altsep in source)


def _local_rows(source: str, split: str) -> Iterator[tuple[str, dict]]:
    path = Path(source)
    if not path.exists() and Path(source.partition("?")[0]).is_dir():  # a directory with ?split=<name>
        base, options = _source_options(source, ("split",))
        yield from _directory_rows(Path(base), split, options.get("split"))
        return
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        yield from _directory_rows(path, split, None)
        return
    if not path.is_file() or not os.access(path, os.R_OK):
        raise DataError(f"{path}: not a readable file")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from _jsonl_rows(path)
    elif suffix == ".json":
        yield from ((f"{path.name} row {i}", row) for i, row in enumerate(_json_file_rows(path), start=1))
    elif suffix in DATASETS_BUILDERS:
        yield from ((f"{path.name} row {i}", row) for i, row in enumerate(_datasets_file(path, suffix), start=1))
    else:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; expected one of {LOCAL_SUFFIXES} or a "
                        "dataset directory")


def _jsonl_rows(path: Path) -> Iterator[tuple[str, dict]]:
    """JSONL line by line: errors name the line, and a line that is not JSON (or not UTF-8) is one bad row.

    Lines are split on line feeds, carriage returns or both, as in text mode, but decoded one at a time, so a bad byte
    deep in a large file is reported at its line (a text-mode read fails in the middle of a block, at an offset
    within it) and ``on_bad_row="skip"`` skips just that row.
    """
    try:
        handle = path.open("rb")
    except OSError as error:
        raise DataError(f"{path}: cannot open ({error.strerror})") from None
    number = 0
    with handle:
        for block in handle:
            for raw in block.splitlines():
                number += 1
                where = f"{path.name} line {number}"
                try:
                    line = raw.decode("utf-8-sig" if number == 1 else "utf-8")  # a leading byte-order mark is dropped
                except UnicodeDecodeError as error:
                    yield where, DataError(f"{where}: not UTF-8 text ({error.reason} at byte {error.start + 1} of "
                                           "the line)")
                    continue
                if line.strip():
                    yield where, _json_value(line, where)


class _RepeatedKeyError(ValueError):
    """A JSON object that gives one key twice."""


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object as a dict, refusing a repeated key (which would keep its last value in silence)."""
    row = dict(pairs)
    if len(row) < len(pairs):
        raise _RepeatedKeyError(next(key for i, (key, _) in enumerate(pairs) if key in dict(pairs[:i])))
    return row


def _json_value(text: str, where: str) -> Any:
    """One JSON document, its numbers read exactly (``0.00005`` stays ``0.00005``, not the float ``5e-05``).

    A text that is not JSON gives the :class:`DataError` (handed on, so ``on_bad_row`` decides: raise or skip).
    """
    try:
        return json.loads(text, parse_float=Decimal, object_pairs_hook=_object)
    except _RepeatedKeyError as error:
        return DataError(f"{where}: the key {error.args[0]!r} is given twice in one object (JSON readers keep the "
                         "last in silence)")
    except json.JSONDecodeError as error:
        return DataError(f"{where}: invalid JSON ({error.msg} at line {error.lineno} column {error.colno})"
                         if error.lineno > 1 else f"{where}: invalid JSON ({error.msg} at column {error.colno})")
    except RecursionError:
        return DataError(f"{where}: invalid JSON (nested too deeply to read)")
    except ValueError as error:  # an integer of thousands of digits (Python's int conversion limit)
        return DataError(f"{where}: invalid JSON ({error})")


def _json_file_rows(path: Path) -> list[Any]:
    """The rows of a ``.json`` file: a list of objects, or ``{"data": [...]}``; numbers read exactly.

    Read here rather than by ``datasets``, whose reader turns numbers into floats (``12345678901234567890.5``
    arrives as ``1.23456789e+19``), so that a gold is the number the file holds.
    """
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DataError(f"{path}: cannot open ({error.strerror})") from None
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark is not JSON
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise DataError(f"{path}: not UTF-8 text ({error.reason} at line {line})") from None
    if not text.strip():
        return []
    value = _json_value(text, str(path))
    if isinstance(value, DataError):
        if "Extra data" in str(value):
            raise DataError(f"{path}: expected one JSON value, found several (JSON Lines? then name the file "
                            ".jsonl)")
        raise DataError(str(value).replace(": invalid JSON (", ": cannot read as JSON (", 1))
    if isinstance(value, dict):
        if not isinstance(value.get("data"), list):
            raise DataError(f"{path}: expected a JSON list of objects (or {{'data': [...]}}), found an object "
                            "without a 'data' list")
        value = value["data"]
    if not isinstance(value, list):
        found = {str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")
        raise DataError(f"{path}: expected a JSON list of objects (or {{'data': [...]}}), found {found}")
    return value


def _datasets_file(path: Path, suffix: str) -> Iterable[dict]:
    """The rows of a local file read by ``datasets.load_dataset`` (an empty file has none)."""
    builder = DATASETS_BUILDERS[suffix]
    options: dict[str, Any] | None = {}
    if builder == "csv":
        options = _csv_options(path, "\t" if suffix == ".tsv" else ",")
    if options is None or path.stat().st_size == 0:
        return []
    import datasets

    try:
        with _quiet_datasets():
            return datasets.load_dataset(builder, data_files=str(path), split="train", **options)
    except Exception as error:  # noqa: BLE001 - datasets wraps the reader's error; its innermost cause says why
        if _no_rows(error):
            return []
        cause = _innermost(error)
        kind = {"parquet": "Parquet", "csv": "CSV", "arrow": "an Arrow file"}[builder]
        raise DataError(f"{path}: cannot read as {kind} ({_reason(cause)})") from None


def _csv_options(path: Path, delimiter: str) -> dict[str, Any] | None:
    """Every column of a CSV file read as text, as written (no ``007`` -> ``7``, no empty cell -> NaN)."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            header = next(csv.reader(handle, delimiter=delimiter), [])
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except csv.Error as error:
        raise DataError(f"{path}: cannot read the CSV header ({error})") from None
    if not header:
        return None
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise DataError(f"{path}: the header names the column {repeated[0]!r} more than once")
    import datasets

    features = datasets.Features({name: datasets.Value("string") for name in header})
    return {"features": features, "keep_default_na": False, "sep": delimiter}


def _directory_rows(path: Path, split: str, chosen: str | None) -> Iterator[tuple[str, dict]]:
    """A directory saved with ``save_to_disk`` (``load_from_disk``) or holding data files (``load_dataset``)."""
    import datasets

    saved = (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()
    try:
        with _quiet_datasets():
            data = datasets.load_from_disk(str(path)) if saved else datasets.load_dataset(str(path))
    except Exception as error:  # noqa: BLE001
        if _no_rows(error):
            return
        raise DataError(f"{path}: not a readable file, nor a dataset directory ({_reason(_innermost(error))})"
                        ) from None
    if chosen is not None and not isinstance(data, Mapping):
        raise DataError(f"{path}: holds one dataset without named splits; drop ?split={chosen}")
    name, rows = _choose_split(data, split, chosen, str(path))
    label = path.name if name is None else f"{path.name} {name}"
    yield from ((f"{label} row {i}", row) for i, row in enumerate(rows, start=1))


def _benchmark_rows(name: str, split: str, streaming: bool) -> Iterator[tuple[str, dict]]:
    spec = BENCHMARKS[name]
    hub_split = split if split in spec.splits else spec.splits[0]
    try:
        import datasets

        data = datasets.load_dataset(spec.hub_id, spec.config, split=hub_split, streaming=streaming)
    except Exception as error:  # noqa: BLE001 - hub errors come in many types; each gets a clear message
        raise DataError(_hub_error_message(name, spec.hub_id, error, gated=spec.gated)) from None
    yield from ((f"{name} {hub_split} row {i}", row) for i, row in enumerate(data, start=1))


def _hub_id_rows(source: str, split: str, streaming: bool) -> Iterator[tuple[str, dict]]:
    hub_id, options = _source_options(source, HUB_OPTIONS)
    chosen = options.get("split")
    try:
        import datasets

        data = datasets.load_dataset(hub_id, options.get("config"), split=chosen, revision=options.get("revision"),
                                     streaming=streaming)
    except Exception as error:  # noqa: BLE001
        raise DataError(_hub_error_message(source, hub_id, error, gated=False, local_too=True)) from None
    name, rows = _choose_split(data, split, chosen, source)
    yield from ((f"{hub_id} {name or chosen} row {i}", row) for i, row in enumerate(rows, start=1))


def _source_options(source: str, allowed: tuple[str, ...]) -> tuple[str, dict[str, str]]:
    """``base?key=value&...`` -> ``(base, {key: value})``, refusing keys outside ``allowed``."""
    base, _, query = source.partition("?")
    options: dict[str, str] = {}
    for pair in filter(None, query.split("&")):
        key, sep, value = pair.partition("=")
        if not sep or key not in allowed or not value:
            raise DataError(f"{source}: expected options {'/'.join(allowed)} as key=value separated by '&', found "
                            f"{pair!r}")
        options[key] = value
    return base, options


def _choose_split(data: Any, split: str, chosen: str | None, label: str) -> tuple[str | None, Iterable[dict]]:
    """One split of a loaded dataset: the chosen one, else the requested one, else the only one."""
    if not isinstance(data, Mapping):  # already one split
        return chosen, data
    names = list(data)
    name = chosen or (split if split in names else names[0] if len(names) == 1 else None)
    if name not in names:
        wanted = chosen or split
        base = label.partition("?")[0]
        raise DataError(f"{label}: no split {wanted!r} (it has {', '.join(names) or 'none'}); choose one with "
                        f"{base}?split=<name>")
    return name, data[name]


def _hub_error_message(name: str, hub_id: str, error: Exception, *, gated: bool, local_too: bool = False) -> str:
    text = " ".join(str(error).split())
    lowered = text.lower()
    if "gated" in lowered or (gated and any(key in lowered for key in ("401", "403", "authenticat", "access"))):
        return (
            f"{name}: {hub_id} is gated. Accept its terms at https://huggingface.co/datasets/{hub_id}, "
            "then run `huggingface-cli login` or set HF_TOKEN."
        )
    local = "no local file or directory of that name, and " if local_too else ""
    if _hub_offline() or "offlinemodeisenabled" in lowered:
        if not local_too:
            return (
                f"{name}: {hub_id} is not in the local cache and the hub is switched off (HF_DATASETS_OFFLINE / "
                "HF_HUB_OFFLINE). Download it once with network access, or point --data.train/--data.test at a "
                "local .jsonl file."
            )
        return (
            f"{name}: {local}{hub_id} is not in the local cache while the hub is switched off "
            "(HF_DATASETS_OFFLINE / HF_HUB_OFFLINE); download it once with network access, or point "
            "--data.train/--data.test at a local file"
        )
    return f"{name}: {local}cannot load {hub_id} from the Hugging Face hub ({type(error).__name__}: {text[:200]})"


def _hub_offline() -> bool:
    switches = (os.environ.get("HF_DATASETS_OFFLINE", ""), os.environ.get("HF_HUB_OFFLINE", ""))
    return any(value.strip().lower() in ("1", "true", "yes", "on") for value in switches)


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No ``datasets`` progress bars while a local source is read (they would be restored afterwards)."""
    import datasets

    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def _innermost(error: BaseException) -> BaseException:
    """The reader's error that ``datasets`` wrapped in its ``DatasetGenerationError`` (else ``error`` itself)."""
    while type(error).__name__ == "DatasetGenerationError" and (error.__cause__ or error.__context__) is not None:
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    return error


def _reason(error: BaseException) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())[:200]}"


def _no_rows(error: BaseException) -> bool:
    """Whether ``datasets`` refused a source only because it holds no rows (a header, ``[]``, ``{"data": []}``)."""
    return isinstance(error, ValueError) and "corresponds to no data" in str(error)


TEST_SEED_OFFSET = 1_000_000
"""Added to a generated source's seed for its test split."""


def _reasoning_gym_rows(source: str, split: str, seed: int) -> Iterator[tuple[str, dict]]:
    task, _, query = source.split(":", 1)[1].partition("?")
    pairs = [_option(pair, source) for pair in query.split("&") if pair]
    options: dict[str, Any] = dict(pairs)
    if len(options) < len(pairs):
        repeated = next(key for i, (key, _) in enumerate(pairs) if key in dict(pairs[:i]))
        raise DataError(f"{source}: option {repeated!r} is given more than once")
    size = _whole_number(options.pop("size", 1000), "size", source, minimum=1)
    # reasoning-gym seeds item i with seed + i, so the test split starts far away from any training item
    task_seed = _whole_number(options.pop("seed", seed), "seed", source) + (0 if split == "train" else TEST_SEED_OFFSET)
    try:
        import reasoning_gym
    except ImportError:
        raise DataError(f"{source}: needs the reasoning-gym package (pip install reasoning-gym)") from None
    _check_generator_options(task, options, source)
    try:
        data = reasoning_gym.create_dataset(task, seed=task_seed, size=size, **options)
    except Exception as error:  # noqa: BLE001
        raise DataError(f"{source}: reasoning-gym cannot create {task!r} with {options} ({error})") from None
    yield from ((f"{task} item {i}", dict(entry)) for i, entry in enumerate(data, start=1))


def _check_generator_options(task: str, options: Mapping[str, Any], source: str) -> None:
    """Refuse an unknown task, or an option its config does not declare, naming the ones it has."""
    import dataclasses

    from reasoning_gym.factory import DATASETS

    if task not in DATASETS:
        close = difflib.get_close_matches(task, list(DATASETS), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise DataError(f"{source}: reasoning-gym has no task {task!r} ({len(DATASETS)} tasks{hint})")
    config = DATASETS[task][1]
    if not dataclasses.is_dataclass(config):
        return
    known = [f.name for f in dataclasses.fields(config) if f.name not in ("seed", "size")]
    unknown = [name for name in options if name not in known]
    if unknown:
        raise DataError(f"{source}: {task!r} has no option {unknown[0]!r}; its options are size, seed, "
                        f"{', '.join(known)}")


def _whole_number(value: Any, name: str, source: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise DataError(f"{source}: option {name!r} must be a whole number{bound}, found {value!r}")
    return value


def _option(pair: str, source: str) -> tuple[str, Any]:
    """``key=value`` of a generated source; ``a,b`` becomes a tuple (``operators=+,-``)."""
    key, sep, value = pair.partition("=")
    if not sep or not key:
        raise DataError(f"{source}: expected options as key=value separated by '&', found {pair!r}")
    if "," in value:
        return key, tuple(_literal(v) for v in value.split(","))
    return key, _literal(value)


def _literal(value: str) -> Any:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(value.lower(), value)


# ---------------------------------------------------------------------- row converters

Converter = Callable[[dict, str, int], Problem]


def _detect_style(row: Any, field_map: Mapping[str, str] | None, where: str) -> str:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object per row, found {type(row).__name__}")
    if field_map:
        return "mapped"
    keys = set(row)
    if {"Question", "Correct Answer"} <= keys:
        return "gpqa"
    if "problem" in keys and ("answer" in keys or "solution" in keys):
        return "math"
    if {"question", "answer"} <= keys:
        return "gsm8k"
    if {"question", "gold"} <= keys:
        return "plain"
    if {"prompt", "solution"} <= keys:
        return "trl"
    raise DataError(
        f"{where}: cannot tell the row's format from its fields {sorted(keys)}; expected question/answer (GSM8K), "
        "problem/answer (MATH), question/gold, prompt/solution (TRL), or set --data.field_map (e.g. "
        "{question: prompt, gold: target})"
    )


def _converter(style: str, field_map: Mapping[str, str] | None) -> Converter:
    return {
        "gsm8k": _gsm8k_row,
        "math": _math_row,
        "gpqa": _gpqa_row,
        "trl": _trl_row,
        "plain": lambda row, where, seed: _plain_row(row, where, "question", "gold"),
        "mapped": lambda row, where, seed: _plain_row(
            row, where, (field_map or {}).get("question", "question"), (field_map or {}).get("gold", "gold"),
            (field_map or {}).get("uid")),
    }[style]


def _text(row: Any, key: str, where: str) -> str:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object per row, found {type(row).__name__}")
    if key not in row or row[key] is None:
        raise DataError(f"{where}: missing field {key!r}")
    value = row[key]
    if isinstance(value, (int, float, Decimal)) and not isinstance(value, bool):
        value = _number_text(value, key, where)
    if not isinstance(value, str):
        raise DataError(f"{where}: field {key!r} must be a string, found {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{where}: field {key!r} is empty")
    if len(value) > MAX_FIELD_CHARS:
        raise DataError(f"{where}: field {key!r} has {len(value):,} characters, more than {MAX_FIELD_CHARS:,}; no "
                        "model's context holds it")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:  # a lone surrogate (JSON "\ud800") would crash the tokenizer mid-training
        raise DataError(f"{where}: field {key!r} holds a character that is not valid Unicode text "
                        f"({value[error.start]!r} at character {error.start + 1}, an unpaired surrogate)") from None
    return value


FLOAT_DIGITS = 15
"""Significant digits a binary float holds exactly: a float with more may not be the number that was written."""


def _number_text(value: int | float | Decimal, key: str, where: str) -> str:
    """A number of a data file as the plain decimal text it was written as (``0.00005``, not ``5e-05``).

    JSONL numbers arrive exact (:class:`~decimal.Decimal` or ``int``). Files read by ``datasets`` (``.json``,
    Parquet) give floats: one whose shortest form has more than :data:`FLOAT_DIGITS` significant digits may have
    been rounded from what the file says (``12345678901234567890`` becomes ``12345678901234567168``), so it is a
    bad row rather than a wrong gold.
    """
    if isinstance(value, float):
        if not math.isfinite(value):  # JSON's NaN/Infinity would become the gold text "nan"
            raise DataError(f"{where}: field {key!r} is {value}, not a usable value")
        shortest = Decimal(repr(value))
        if len(shortest.as_tuple().digits) > FLOAT_DIGITS:
            raise DataError(f"{where}: field {key!r} is the floating-point number {value!r}, which holds only about "
                            f"{FLOAT_DIGITS} exact digits; write the value as a string (\"...\") or in a .jsonl file")
        value = shortest
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise DataError(f"{where}: field {key!r} is {value}, not a usable value")
        if abs(value.adjusted()) > MAX_FIELD_CHARS:
            raise DataError(f"{where}: field {key!r} is the number {value}, with more than {MAX_FIELD_CHARS:,} digits")
        return format(value, "f")
    return str(value)


def _question(row: Any, key: str, where: str) -> str:
    """The question field: text, or chat messages (TRL's conversational prompts), whose last user message is it."""
    value = row.get(key) if isinstance(row, dict) else None
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        users = [m.get("content") for m in value if m.get("role") == "user"]
        if not users:
            raise DataError(f"{where}: field {key!r} holds chat messages without a user message")
        return _text({key: users[-1]}, key, where)
    return _text(row, key, where)


def _gsm8k_row(row: dict, where: str, seed: int) -> Problem:
    question = _text(row, "question", where)
    return Problem(question, _number_after_hashes(_text(row, "answer", where), "answer", where), "gsm8k", where)


def _number_after_hashes(solution: str, key: str, where: str) -> str:
    """The gold of a GSM8K worked solution: the number after its last ``####``, strictly (the whole tail)."""
    tail = ""
    try:
        gsm8k_gold(solution)  # the '####' and its message
        tail = solution.rsplit("####", 1)[1].strip()
        return get_answer_format("gsm8k").parse_gold(tail)
    except ValueError as error:
        message = str(error) if "####" in str(error) else f"expected a number after '####', found {tail[:60]!r}"
        raise DataError(f"{where}: field {key!r} {message}") from None


def _math_row(row: dict, where: str, seed: int) -> Problem:
    question = _text(row, "problem", where)
    if row.get("answer") is not None:
        gold = _text(row, "answer", where).strip()
    else:
        gold = last_boxed(_text(row, "solution", where)) or ""
        if not gold.strip():
            raise DataError(f"{where}: field 'solution' has no \\boxed{{...}} answer and there is no 'answer' field")
    return Problem(question, gold, "math500", str(row.get("unique_id") or where))


def _gpqa_row(row: dict, where: str, seed: int) -> Problem:
    incorrect = [_text(row, f"Incorrect Answer {i}", where) for i in (1, 2, 3)]
    uid = str(row.get("Record ID") or where)
    choices, letter = shuffle_choices(_text(row, "Correct Answer", where), incorrect, seed=f"{seed}:{uid}")
    return Problem(format_choices(_text(row, "Question", where), choices), letter, "gpqa_diamond", uid)


def _trl_row(row: dict, where: str, seed: int) -> Problem:
    """TRL's ``prompt``/``solution``: a number is graded as GSM8K, anything else (LaTeX) with math-verify."""
    question = _question(row, "prompt", where)
    solution = _text(row, "solution", where).strip()
    boxed = last_boxed(solution)
    gold = solution if boxed is None else boxed.strip()
    if not gold:
        raise DataError(f"{where}: field 'solution' has an empty \\boxed{{}}")
    try:
        return Problem(question, get_answer_format("gsm8k").parse_gold(gold), "gsm8k", where)
    except ValueError:
        return Problem(question, gold, "math500", where)


def _plain_row(row: dict, where: str, question_key: str, gold_key: str, uid_key: str | None = None) -> Problem:
    r"""A question and its gold.

    A gold that is a worked solution is read as its benchmark's would be: the number after a GSM8K ``####``, or
    the last ``\boxed{}`` of a MATH solution (graded as a number, else with
    math-verify) -- never the whole solution, which no answer would match.
    """
    question = _question(row, question_key, where)
    gold = _text(row, gold_key, where)
    uid = str(row.get(uid_key)) if uid_key and row.get(uid_key) is not None else where
    if "####" in gold:
        return Problem(question, _number_after_hashes(gold, gold_key, where), "gsm8k", uid)
    boxed = last_boxed(gold)
    if boxed is not None and not gold.strip().startswith("\\boxed"):
        if not boxed.strip():
            raise DataError(f"{where}: field {gold_key!r} has an empty \\boxed{{}}")
        gold, fallback = boxed.strip(), "math500"
    else:
        fallback = "exact"
    try:
        return Problem(question, get_answer_format("gsm8k").parse_gold(gold), "gsm8k", uid)
    except ValueError:
        return Problem(question, gold, fallback, uid)


def _generated_row(row: dict, where: str, seed: int) -> Problem:
    return _plain_row({"question": row.get("question"), "gold": row.get("answer")}, where, "question", "gold")
