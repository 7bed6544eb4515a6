"""``ReasoningDataModule``: training problems streamed in a seeded order, evaluation sets loaded whole.

A source is one string (see :mod:`tracer_pl.sources`), so ``--data.train=path/to/train.jsonl`` and
``--data.test='[gsm8k, math500]'`` work on the command line. Batches are plain lists
of :class:`~tracer_pl.problem.Problem`.

Training makes ``passes`` passes (one by default, as in the paper) in one epoch; a second epoch would repeat
the same order, so configs keep ``trainer.max_epochs: 1`` and set ``passes``. Each pass is a seeded
permutation of a local or generated set, or a seeded shuffle buffer over a streamed hub set. Under DDP every
rank takes every ``world_size``-th problem and all ranks stop at the same batch. The position in the stream is
part of the checkpoint (``state_dict``), so a resumed run continues with the next unseen problem.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Iterator
from typing import Any

import lightning as L
from torch.utils.data import DataLoader, IterableDataset

from tracer_pl.errors import ConfigError, DataError
from tracer_pl.problem import Problem
from tracer_pl.sources import BENCHMARKS, BadRows, OnBadRow, load_problems, source_name

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
    """

    def __init__(self, load: Any, *, streamed: bool, seed: int, passes: int, rank: int, world_size: int,
                 batch_size: int, limit: int | None, shuffle_buffer: int, start: int = 0) -> None:
        self.load, self.streamed, self.seed, self.passes = load, streamed, seed, passes
        self.rank, self.world_size, self.batch_size = rank, world_size, batch_size
        self.limit, self.shuffle_buffer, self.start = limit, shuffle_buffer, start

    def ordered(self, pass_index: int) -> Iterator[Problem]:
        """All problems of one pass, in that pass's seeded order (the same on every rank)."""
        problems = itertools.islice(self.load(), self.limit)
        rng = random.Random(self.seed + pass_index)
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
        for pass_index in range(self.passes):
            group: list[Problem] = []
            chunk = self.world_size * self.batch_size
            for problem in self.ordered(pass_index):
                group.append(problem)
                if len(group) == chunk:
                    yield from group[self.rank :: self.world_size]
                    group = []

    def __iter__(self) -> Iterator[Problem]:
        return itertools.islice(self.mine(), self.start, None)


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
        seed: Seed of the training order, of generated problems and of GPQA's option shuffles.
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
    ) -> None:
        super().__init__()
        self.train = train
        self.test = [test] if isinstance(test, str) else list(test or [])
        self.val = [val] if isinstance(val, str) else list(val or [])
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.train_limit, self.test_limit, self.passes, self.seed = train_limit, test_limit, passes, seed
        self.field_map, self.answer_format, self.on_bad_row = field_map, answer_format, on_bad_row
        self.shuffle_buffer, self.stream_hub = shuffle_buffer, stream_hub
        self._validate()
        self.bad_rows = BadRows()
        self._consumed = 0  # training problems of this rank consumed by completed steps (for resuming)
        self._sets: dict[str, list[list[Problem]]] = {}

    def _validate(self) -> None:
        for flag, value, minimum in [("batch_size", self.batch_size, 1), ("eval_batch_size", self.eval_batch_size, 1),
                                     ("passes", self.passes, 1), ("shuffle_buffer", self.shuffle_buffer, 1),
                                     ("train_limit", self.train_limit, 1), ("test_limit", self.test_limit, 1)]:
            if value is not None and value < minimum:
                raise ConfigError(f"--data.{flag} must be at least {minimum}, got {value}")

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
        """Load the evaluation sets the stage needs (training streams lazily)."""
        if stage == "fit" and self.train is None:
            raise ConfigError("--data.train is required to fit (a benchmark name, a file path or reasoning_gym:<task>)")
        wanted = {"fit": self.val, "validate": self.val, "test": self.test, "predict": self.test}.get(stage, [])
        if stage in ("test", "validate") and not wanted:
            flag = "--data.test" if stage == "test" else "--data.val"
            raise ConfigError(f"{flag} is required to {stage} (one source or a list)")
        for source in wanted:
            if source not in self._sets:
                problems = self._eval_set(source)
                self._sets[source] = [problems[i : i + self.eval_batch_size]
                                      for i in range(0, len(problems), self.eval_batch_size)]

    def train_stream(self, rank: int = 0, world_size: int = 1) -> ProblemStream:
        """The training problems of ``rank``, starting after the ones already consumed."""
        assert self.train is not None
        source = self.train
        return ProblemStream(lambda: self._load(source, "train"), streamed=self.stream_hub and source in BENCHMARKS,
                             seed=self.seed, passes=self.passes, rank=rank, world_size=world_size,
                             batch_size=self.batch_size, limit=self.train_limit, shuffle_buffer=self.shuffle_buffer,
                             start=self._consumed)

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        return DataLoader(self.train_stream(rank, world), batch_size=self.batch_size, collate_fn=list)

    def val_dataloader(self) -> list[DataLoader]:
        return [DataLoader(self._sets[s], batch_size=None) for s in self.val]

    def test_dataloader(self) -> list[DataLoader]:
        return [DataLoader(self._sets[s], batch_size=None) for s in self.test]

    def state_dict(self) -> dict[str, Any]:
        """The training position: problems of this rank consumed by the steps run so far."""
        consumed = self._consumed
        if self.trainer is not None:  # steps of this epoch, restored by Lightning on resume, counted from 0
            consumed = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed * self.batch_size
        return {"consumed": consumed, "seed": self.seed, "train": self.train}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("train") != self.train or state_dict.get("seed") != self.seed:
            log.warning("resuming with a different --data.train or --data.seed: the stream restarts from its beginning")
            return
        self._consumed = int(state_dict["consumed"])


def _names(sources: list[str]) -> list[str]:
    names = [source_name(s) for s in sources]
    return [f"{n}{i}" if names.count(n) > 1 else n for i, n in enumerate(names)]
