"""Data sources: one string names where problems come from.

* a benchmark: ``gsm8k`` (``openai/gsm8k``, config ``main``), ``math500`` (``HuggingFaceH4/MATH-500``),
  ``gpqa_diamond`` (``Idavidrein/gpqa``, config ``gpqa_diamond``; gated), from the Hugging Face hub;
* a local file: ``*.jsonl``, ``*.json`` (a list of objects) or ``*.parquet``, with GSM8K-style
  (``question``/``answer`` with ``####``), MATH-style (``problem``/``answer`` or ``solution``), GPQA-style or
  plain ``question``/``gold`` fields; other columns are mapped with ``field_map``;
* ``reasoning_gym:<task>`` with optional ``?size=200&seed=1&<task option>=...``: problems generated offline by
  the ``reasoning-gym`` package, e.g. ``reasoning_gym:basic_arithmetic?size=500&max_terms=3&operators=+,-``
  (a comma makes a tuple). Test sets are generated with ``seed + 1_000_000``: reasoning-gym seeds item *i* with
  ``seed + i``, so no test item shares its random stream with a training item of a smaller set.

Every row becomes a :class:`~tracer_pl.core.problem.Problem` or a :class:`~tracer_pl.errors.DataError` naming the
file, the row (1-based line number for JSONL), the field and what was expected. With ``on_bad_row="skip"`` bad
rows are dropped and their reasons collected instead -- never turned into a wrong gold answer.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tracer_pl.core.problem import Problem
from tracer_pl.errors import DataError
from tracer_pl.grading.answers import format_choices, get_answer_format, gsm8k_gold, last_boxed, shuffle_choices

OnBadRow = Literal["raise", "skip"]
MAX_FIELD_CHARS = 200_000
"""A longer question or answer is a bad row: no model's context holds it, and tokenizing it is already slow."""
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")


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
    """A short name for logs and metric keys: the benchmark or task name, or the file's stem."""
    if source in BENCHMARKS:
        return source
    if source.startswith("reasoning_gym:"):
        return source.split(":", 1)[1].split("?", 1)[0]
    return Path(source).stem


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
        source: A benchmark name, a local path, or ``reasoning_gym:<task>[?options]``.
        split: ``train`` or ``test`` (benchmarks with one split use it for both; generated sets use another seed).
        streaming: Stream hub datasets instead of downloading them whole.
        field_map: Maps ``question``/``gold`` (and optionally ``uid``) to the columns that hold them.
        answer_format: Grade with this registered format instead of the detected one.
        seed: Seed of generated problems and of GPQA's option shuffles.
        on_bad_row: ``raise`` a DataError on the first bad row, or ``skip`` it and record why in ``bad_rows``.
        bad_rows: Collects the skipped rows' reasons.
    """
    if answer_format is not None:
        get_answer_format(answer_format)  # fail early on a typo
    if source.startswith("reasoning_gym:"):
        rows: Iterable[tuple[str, dict]] = _reasoning_gym_rows(source, split, seed)
        convert = _generated_row
    elif source in BENCHMARKS:
        rows, convert = _hub_rows(source, split, streaming), _converter(BENCHMARKS[source].style, field_map)
    elif source.endswith(LOCAL_SUFFIXES) or os.sep in source or Path(source).exists():
        rows, convert = _file_rows(Path(source)), None  # detected from the first row
    else:
        raise DataError(
            f"unknown data source {source!r}: expected one of {sorted(BENCHMARKS)}, a path to a .jsonl/.json/.parquet "
            "file, or reasoning_gym:<task>"
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


# ---------------------------------------------------------------------- row readers


def _file_rows(path: Path) -> Iterator[tuple[str, dict]]:
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if not path.is_file() or not os.access(path, os.R_OK):
        raise DataError(f"{path}: not a readable file")
    if path.suffix == ".jsonl":
        yield from _jsonl_rows(path)
    elif path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))  # a byte-order mark is not JSON
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise DataError(f"{path}: invalid JSON ({error})") from None
        rows = data.get("data", data) if isinstance(data, dict) else data
        if not isinstance(rows, list):
            found = type(rows).__name__
            raise DataError(f"{path}: expected a JSON list of objects (or {{'data': [...]}}), found {found}")
        yield from ((f"{path.name} row {i}", row) for i, row in enumerate(rows, start=1))
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as error:  # noqa: BLE001 - pyarrow raises several types for bad files
            raise DataError(f"{path}: cannot read as Parquet ({error})") from None
        yield from ((f"{path.name} row {i}", row) for i, row in enumerate(table.to_pylist(), start=1))
    else:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; expected one of {LOCAL_SUFFIXES}")


def _jsonl_rows(path: Path) -> Iterator[tuple[str, dict]]:
    try:
        handle = path.open(encoding="utf-8-sig")  # utf-8-sig: a leading byte-order mark is dropped
    except OSError as error:
        raise DataError(f"{path}: cannot open ({error.strerror})") from None
    with handle:
        try:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                where = f"{path.name} line {number}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:  # handed on, so on_bad_row decides: raise or skip
                    row = DataError(f"{where}: invalid JSON ({error.msg} at column {error.colno})")
                yield where, row
        except UnicodeDecodeError as error:
            raise DataError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None


def _hub_rows(name: str, split: str, streaming: bool) -> Iterator[tuple[str, dict]]:
    spec = BENCHMARKS[name]
    hub_split = split if split in spec.splits else spec.splits[0]
    try:
        import datasets

        data = datasets.load_dataset(spec.hub_id, spec.config, split=hub_split, streaming=streaming)
    except Exception as error:  # noqa: BLE001 - hub errors come in many types; each gets a clear message
        raise DataError(_hub_error_message(name, spec, error)) from None
    yield from ((f"{name} {hub_split} row {i}", row) for i, row in enumerate(data, start=1))


def _hub_error_message(name: str, spec: Benchmark, error: Exception) -> str:
    text = str(error)
    if spec.gated and any(key in text.lower() for key in ("gated", "401", "403", "authenticat", "access")):
        return (
            f"{name}: {spec.hub_id} is gated. Accept its terms at https://huggingface.co/datasets/{spec.hub_id}, "
            "then run `huggingface-cli login` or set HF_TOKEN."
        )
    if os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1":
        return (
            f"{name}: {spec.hub_id} is not in the local cache and the hub is switched off (HF_DATASETS_OFFLINE / "
            "HF_HUB_OFFLINE). Download it once with network access, or point --data.train/--data.test at a local "
            ".jsonl file."
        )
    return f"{name}: cannot load {spec.hub_id} from the Hugging Face hub ({type(error).__name__}: {text[:200]})"


TEST_SEED_OFFSET = 1_000_000
"""Added to a generated source's seed for its test split."""


def _reasoning_gym_rows(source: str, split: str, seed: int) -> Iterator[tuple[str, dict]]:
    task, _, query = source.split(":", 1)[1].partition("?")
    options: dict[str, Any] = dict(_option(pair, source) for pair in query.split("&") if pair)
    size = _whole_number(options.pop("size", 1000), "size", source, minimum=1)
    # reasoning-gym seeds item i with seed + i, so the test split starts far away from any training item
    task_seed = _whole_number(options.pop("seed", seed), "seed", source) + (0 if split == "train" else TEST_SEED_OFFSET)
    try:
        import reasoning_gym
    except ImportError:
        raise DataError(f"{source}: needs the reasoning-gym package (pip install reasoning-gym)") from None
    try:
        data = reasoning_gym.create_dataset(task, seed=task_seed, size=size, **options)
    except Exception as error:  # noqa: BLE001
        raise DataError(f"{source}: reasoning-gym cannot create {task!r} with {options} ({error})") from None
    yield from ((f"{task} item {i}", dict(entry)) for i, entry in enumerate(data, start=1))


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
    raise DataError(
        f"{where}: cannot tell the row's format from its fields {sorted(keys)}; expected question/answer (GSM8K), "
        "problem/answer (MATH), question/gold, or set --data.field_map (e.g. {question: prompt, gold: target})"
    )


def _converter(style: str, field_map: Mapping[str, str] | None) -> Converter:
    return {
        "gsm8k": _gsm8k_row,
        "math": _math_row,
        "gpqa": _gpqa_row,
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
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):  # JSON's NaN/Infinity would become the gold text "nan"
            raise DataError(f"{where}: field {key!r} is {value}, not a usable value")
        value = str(value)
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


def _gsm8k_row(row: dict, where: str, seed: int) -> Problem:
    question = _text(row, "question", where)
    solution = _text(row, "answer", where)
    try:
        gsm8k_gold(solution)  # the '####' and its message
        tail = solution.rsplit("####", 1)[1].strip()
        gold = get_answer_format("gsm8k").parse_gold(tail)  # strict: the whole tail is one number
    except ValueError as error:
        message = str(error) if "####" in str(error) else f"expected a number after '####', found {tail[:60]!r}"
        raise DataError(f"{where}: field 'answer' {message}") from None
    return Problem(question, gold, "gsm8k", where)


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


def _plain_row(row: dict, where: str, question_key: str, gold_key: str, uid_key: str | None = None) -> Problem:
    question = _text(row, question_key, where)
    gold = _text(row, gold_key, where)
    try:
        gold = get_answer_format("gsm8k").parse_gold(gold)
        dataset = "gsm8k"
    except ValueError:
        dataset = "exact"
    uid = str(row.get(uid_key)) if uid_key and row.get(uid_key) is not None else where
    return Problem(question, gold, dataset, uid)


def _generated_row(row: dict, where: str, seed: int) -> Problem:
    return _plain_row({"question": row.get("question"), "gold": row.get("answer")}, where, "question", "gold")
