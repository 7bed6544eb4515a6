"""``ReasoningDataModule``: training problems streamed in a seeded order, evaluation sets loaded whole.

A source is one string (see :mod:`tracer_pl.data.sources`), so ``--data.train=path/to/train.jsonl`` and
``--data.test='[gsm8k, math500]'`` work on the command line. Batches are plain lists
of :class:`~tracer_pl.core.problem.Problem`.

Training makes ``passes`` passes (one by default, as in the paper) in one epoch; a second epoch would repeat
the same order, so configs keep ``trainer.max_epochs: 1`` and set ``passes``. Each pass is a seeded
permutation of a local or generated set, or a seeded shuffle buffer over a streamed hub set. Under DDP every
rank takes every ``world_size``-th problem and all ranks stop at the same batch. The position in the stream is
part of the checkpoint (``state_dict``), so a resumed run continues with the next unseen problem.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader, IterableDataset

from tracer_pl.core.problem import Problem
from tracer_pl.data.sources import BENCHMARKS, BadRows, OnBadRow, check_field_map, load_problems, source_name
from tracer_pl.errors import ConfigError, DataError
from tracer_pl.training import checkpoints

log = logging.getLogger(__name__)


class ProblemStream(IterableDataset):
    """The training problems of one rank, in a seeded order, from a given start position.

    Args:
        load: Returns a fresh iterator over the source's problems in file order.
        streamed: The source is a hub stream (shuffle with a buffer instead of a full permutation).
        seed: Seed of the order; pass ``p`` uses ``seed + p``.
        passes: Number of passes over the data.
        rank: This process's rank.
        world_size: Number of ranks.
        batch_size: Problems per batch (ranks stop at a common number of whole batches).
        limit: Use only the first ``limit`` problems of the source.
        shuffle_buffer: Buffer size of the streamed shuffle.
        start: Problems of this rank already consumed (for resuming).
        name: The source, for messages.
        bad_rows: Where the source's loader records skipped rows (counted once, on the first pass).

    Raises:
        DataError: on iteration, when the first pass does not fill one whole batch on every rank (an empty file,
            only blank lines or skipped rows, fewer problems than a batch): a run would train nothing.
    """

    def __init__(self, load: Any, *, streamed: bool, seed: int, passes: int, rank: int, world_size: int,
                 batch_size: int, limit: int | None, shuffle_buffer: int, start: int = 0,
                 name: str = "training data", bad_rows: BadRows | None = None, shuffle: bool = True) -> None:
        self.shuffle = shuffle
        self.load, self.streamed, self.seed, self.passes = load, streamed, seed, passes
        self.rank, self.world_size, self.batch_size = rank, world_size, batch_size
        self.limit, self.shuffle_buffer, self.start = limit, shuffle_buffer, start
        self.name, self.bad_rows = name, bad_rows if bad_rows is not None else BadRows()
        self.skipped = 0  # bad rows skipped in one pass

    def ordered(self, pass_index: int) -> Iterator[Problem]:
        """All problems of one pass, in that pass's seeded order (the same on every rank)."""
        problems = itertools.islice(self.load(), self.limit)
        rng = random.Random(self.seed + pass_index)
        if not self.shuffle:
            yield from problems
            return
        if not self.streamed:
            items = list(problems)
            rng.shuffle(items)
            yield from items
            return
        buffer: list[Problem] = []
        for problem in problems:
            buffer.append(problem)
            if len(buffer) >= self.shuffle_buffer:
                yield buffer.pop(rng.randrange(len(buffer)))
        rng.shuffle(buffer)
        yield from buffer

    def mine(self) -> Iterator[Problem]:
        """This rank's share of every pass, cut so that all ranks yield the same number of whole batches."""
        chunk = self.world_size * self.batch_size
        for pass_index in range(self.passes):
            group: list[Problem] = []
            usable = 0
            before = len(self.bad_rows)
            for problem in self.ordered(pass_index):
                group.append(problem)
                usable += 1
                if len(group) == chunk:
                    yield from group[self.rank :: self.world_size]
                    group = []
            if pass_index == 0:
                self._end_of_first_pass(usable, len(self.bad_rows) - before, chunk)

    def _end_of_first_pass(self, usable: int, skipped: int, chunk: int) -> None:
        self.skipped = skipped
        if skipped:
            log.warning("%s: %s", self.name, self.bad_rows.summary())
        if usable < chunk:
            rows = f"{usable} usable problems" + (f" ({skipped} bad rows skipped)" if skipped else "")
            raise DataError(
                f"{self.name}: {rows}, fewer than one training batch of {chunk} (--data.batch_size "
                f"{self.batch_size} x {self.world_size} processes): nothing would be trained; add problems or lower "
                "--data.batch_size"
            )
        if usable % chunk:
            log.info("%s: the last %d problems of each pass do not fill a batch and are not used", self.name,
                     usable % chunk)

    def __iter__(self) -> Iterator[Problem]:
        """The problems, after ``start`` of them the first time (a resumed epoch); every later pass in full."""
        start, self.start = self.start, 0
        return itertools.islice(self.mine(), start, None)


class ReasoningDataModule(L.LightningDataModule):
    """Reasoning problems for training, validation and test.

    Args:
        train: The training source: ``gsm8k``, ``math500``, ``gpqa_diamond``, a local ``.jsonl``/``.json``/
            ``.parquet`` path, or ``reasoning_gym:<task>[?size=N&seed=S&option=value]``.
        test: One source or a list of them; each is a separate test set with its own metrics.
        val: Validation sources, like ``test`` (none by default).
        batch_size: Training problems per step, played in lockstep.
        eval_batch_size: Problems per evaluation step (default: ``batch_size``).
        train_limit: Use only the first N training problems of the source (before shuffling).
        test_limit: Use only the first N problems of each evaluation set.
        passes: Passes over the training problems.
        seed: Seed of the training order (with ``shuffle``), of generated problems and of GPQA's option shuffles.
        shuffle: Shuffle the training problems, in a new seeded order every pass; ``false`` (the default) reads
            them in the source's order, as the released code does (the paper says only "one online pass").
        field_map: Column names for local files in another layout, e.g. ``{question: prompt, gold: target}``.
        answer_format: Grade every source with this registered answer format instead of the detected one.
        on_bad_row: ``raise`` on a malformed row, or ``skip`` it (counted and logged).
        shuffle_buffer: Shuffle buffer of streamed hub sources.
        stream_hub: Stream hub training sources instead of downloading them.
    """

    def __init__(
        self,
        train: str | None = None,
        test: str | list[str] | None = None,
        val: str | list[str] | None = None,
        batch_size: int = 1,
        eval_batch_size: int | None = None,
        train_limit: int | None = None,
        test_limit: int | None = None,
        passes: int = 1,
        seed: int = 42,
        field_map: dict[str, str] | None = None,
        answer_format: str | None = None,
        on_bad_row: OnBadRow = "raise",
        shuffle_buffer: int = 1000,
        stream_hub: bool = True,
        shuffle: bool = False,
    ) -> None:
        super().__init__()
        self.train = os.fspath(train) if isinstance(train, os.PathLike) else train
        self.test = [os.fspath(s) if isinstance(s, os.PathLike) else s for s in _listed(test)]
        self.val = [os.fspath(s) if isinstance(s, os.PathLike) else s for s in _listed(val)]
        self.batch_size = batch_size
        self.eval_batch_size = batch_size if eval_batch_size is None else eval_batch_size
        self.train_limit, self.test_limit, self.passes, self.seed = train_limit, test_limit, passes, seed
        self.field_map, self.answer_format, self.on_bad_row = field_map, answer_format, on_bad_row
        self.shuffle_buffer, self.stream_hub, self.shuffle = shuffle_buffer, stream_hub, shuffle
        self._validate()
        self.bad_rows = BadRows()
        self._consumed = 0  # training problems of this rank consumed by completed steps (for resuming)
        self._sets: dict[str, list[list[Problem]]] = {}
        self._train_digest: str | None = None
        self._stream: ProblemStream | None = None

    def _validate(self) -> None:
        for flag, source in [("train", self.train), *(("test", s) for s in self.test), *(("val", s) for s in self.val)]:
            if source is not None and (not isinstance(source, str) or not source.strip()):
                raise ConfigError(f"--data.{flag} must name a source (a benchmark, a file path, a hub id or "
                                  f"reasoning_gym:<task>), got {source!r}")
        if self.on_bad_row not in ("raise", "skip"):
            raise ConfigError(f"--data.on_bad_row must be raise or skip, got {self.on_bad_row!r}")
        check_field_map(self.field_map)
        for flag, value, minimum in [("batch_size", self.batch_size, 1), ("eval_batch_size", self.eval_batch_size, 1),
                                     ("passes", self.passes, 1), ("shuffle_buffer", self.shuffle_buffer, 1),
                                     ("train_limit", self.train_limit, 1), ("test_limit", self.test_limit, 1)]:
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigError(f"--data.{flag} must be a whole number, got {value!r}")
            if value is not None and value < minimum:
                raise ConfigError(f"--data.{flag} must be at least {minimum}, got {value}")
        for flag, sources in (("test", self.test), ("val", self.val)):
            repeated = sorted({source for source in sources if sources.count(source) > 1})
            if repeated:
                raise ConfigError(f"--data.{flag} names {repeated[0]!r} more than once; each set is evaluated once")

    @property
    def test_names(self) -> list[str]:
        return _names(self.test)

    @property
    def val_names(self) -> list[str]:
        return _names(self.val)

    def _load(self, source: str, split: str) -> Iterator[Problem]:
        streaming = split == "train" and self.stream_hub and source in BENCHMARKS
        return load_problems(source, split=split, streaming=streaming, field_map=self.field_map,
                             answer_format=self.answer_format, seed=self.seed, on_bad_row=self.on_bad_row,
                             bad_rows=self.bad_rows)

    def _eval_set(self, source: str) -> list[Problem]:
        before = len(self.bad_rows)
        problems = list(itertools.islice(self._load(source, "test"), self.test_limit))
        if not problems:
            raise DataError(f"{source}: no usable problems")
        if len(self.bad_rows) > before:
            log.warning("%s: %s", source, self.bad_rows.summary())
        return problems

    def setup(self, stage: str) -> None:
        """Check the training source (it streams lazily) and load the evaluation sets the stage needs.

        Lightning calls this before the model is built, so a missing or unreadable source is refused before minutes
        of loading a large model.
        """
        if stage == "fit":
            if self.train is None:
                raise ConfigError("--data.train is required to fit (a benchmark name, a file path or "
                                  "reasoning_gym:<task>)")
            self.check_train()
        wanted = {"fit": self.val, "validate": self.val, "test": self.test, "predict": self.test}.get(stage, [])
        if stage in ("test", "validate") and not wanted:
            flag = "--data.test" if stage == "test" else "--data.val"
            raise ConfigError(f"{flag} is required to {stage} (one source or a list)")
        for source in wanted:
            if source not in self._sets:
                problems = self._eval_set(source)
                self._sets[source] = [problems[i : i + self.eval_batch_size]
                                      for i in range(0, len(problems), self.eval_batch_size)]

    def check_train(self) -> None:
        """Read the training source up to its first usable problem, raising what reading it in training would.

        A missing or unreadable file, a bad first row (with ``on_bad_row: raise``), an unknown source or a hub set
        that cannot be reached end here with the same one-line :class:`DataError`. Skipped rows are not counted
        (the stream counts them once, when it reads them).
        """
        assert self.train is not None
        problems = load_problems(self.train, split="train", streaming=self.stream_hub and self.train in BENCHMARKS,
                                 field_map=self.field_map, answer_format=self.answer_format, seed=self.seed,
                                 on_bad_row=self.on_bad_row, bad_rows=BadRows())
        try:
            next(problems, None)
        finally:
            problems.close()  # the file it opened

    def train_stream(self, rank: int = 0, world_size: int = 1) -> ProblemStream:
        """The training problems of ``rank``, starting after the ones already consumed."""
        assert self.train is not None
        source = self.train
        return ProblemStream(lambda: self._load(source, "train"), streamed=self.stream_hub and source in BENCHMARKS,
                             seed=self.seed, passes=self.passes, rank=rank, world_size=world_size,
                             batch_size=self.batch_size, limit=self.train_limit, shuffle_buffer=self.shuffle_buffer,
                             start=self._consumed, name=source, bad_rows=self.bad_rows, shuffle=self.shuffle)

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        reloaded = self._stream is not None
        self._stream = self.train_stream(rank, world)
        if reloaded:  # a later epoch's loader: the resumed position belonged to the epoch it was saved in
            self._stream.start = 0
        return DataLoader(self._stream, batch_size=self.batch_size, collate_fn=list)

    @property
    def train_skipped(self) -> int:
        """Bad training rows skipped in one pass (known once the first pass has been read)."""
        return self._stream.skipped if self._stream is not None else 0

    def val_dataloader(self) -> list[DataLoader]:
        return [DataLoader(self._sets[s], batch_size=None) for s in self.val]

    def test_dataloader(self) -> list[DataLoader]:
        return [DataLoader(self._sets[s], batch_size=None) for s in self.test]

    def state_dict(self) -> dict[str, Any]:
        """The training position (problems of this rank consumed so far) and the settings it is relative to."""
        consumed = self._consumed
        if self.trainer is not None:  # steps of this epoch, restored by Lightning on resume, counted from 0
            consumed = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed * self.batch_size
        return {"consumed": consumed, "settings": self.resume_settings()}

    def resume_settings(self, world_size: int | None = None) -> dict[str, Any]:
        """Everything that decides which problem comes at which position, keyed by its flag (``data.batch_size``).

        Includes the training file's SHA-256 (``data.train_file_sha256``): an edited file shifts the positions.
        ``world_size`` defaults to the attached trainer's (1 without one).
        """
        world = world_size or (self.trainer.world_size if self.trainer is not None else 1)
        if self._train_digest is None:
            self._train_digest = file_digest(self.train)
        return {"data.train": self.train, "data.train_file_sha256": self._train_digest, "data.seed": self.seed,
                "data.batch_size": self.batch_size, "data.passes": self.passes, "data.train_limit": self.train_limit,
                "data.shuffle": self.shuffle, "data.shuffle_buffer": self.shuffle_buffer,
                "data.stream_hub": self.stream_hub,
                "data.field_map": self.field_map, "data.answer_format": self.answer_format,
                "trainer.devices (number of processes)": world}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue from the saved position; refuse (naming the flag) settings that would move it.

        Raises:
            ConfigError: when fitting with data settings, or a data file, other than the checkpoint's.
        """
        if self.trainer is not None and self.trainer.state.fn != "fit":
            return  # validate/test never use the training position
        saved = dict(state_dict.get("settings") or {"data.train": state_dict.get("train"),
                                                    "data.seed": state_dict.get("seed")})
        saved.setdefault("data.shuffle", True)  # checkpoints from before the setting existed trained shuffled
        checkpoints.check_data(saved, self.resume_settings())
        self._consumed = int(state_dict["consumed"])
        self._stream = None  # the next loader starts at this position


def _listed(sources: Any) -> list[Any]:
    """One source or several as a list (a path object is one source)."""
    return [sources] if isinstance(sources, (str, os.PathLike)) else list(sources or [])


def file_digest(source: str | None) -> str | None:
    """SHA-256 of a local training file; None for generated and hub sources (named by their source string)."""
    if source is None or source in BENCHMARKS or source.startswith("reasoning_gym:"):
        return None
    path = Path(source)
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _names(sources: list[str]) -> list[str]:
    """A distinct name per evaluation set (its metric keys and records file).

    The source's short name, numbered by position where several share it, and numbered further where that number
    is another set's own name: ``a/x.jsonl``, ``b/x.jsonl`` and ``x1.jsonl`` become ``x0``, ``x1_2`` and ``x1``.
    """
    names = [source_name(s) for s in sources]
    wanted = [f"{n}{i}" if names.count(n) > 1 else n for i, n in enumerate(names)]
    reserved = {n for n in names if names.count(n) == 1}  # a set whose name is its own keeps it
    taken: set[str] = set()
    result = []
    for name, own in zip(wanted, (names.count(n) == 1 for n in names)):
        unique, k = name, 2
        while unique in taken or (not own and unique in reserved):
            unique, k = f"{name}_{k}", k + 1
        taken.add(unique)
        result.append(unique)
    return result
