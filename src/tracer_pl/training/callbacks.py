"""Training callbacks.

:class:`ControllerMonitor` logs every controller's regret table per state through the trainer's loggers (CSV,
TensorBoard, ...): the data of the regret-convergence and speak-rate plots of ``tracer-pl report``.

:class:`BatchCheckpoint` saves every N training *batches*. Lightning's ``ModelCheckpoint(every_n_train_steps)``
counts optimizer steps, and with manual optimization one batch makes zero to several of them (one per role per
speaking round with signal), so it cannot promise a save "every N steps" here. It saves with the public
``trainer.save_checkpoint`` through :class:`AtomicCheckpointIO`: the checkpoint is written to a temporary file
beside the target (never in ``$TMPDIR``: a small ``/tmp`` must not break saves), flushed to disk and renamed into
place, so ``last.ckpt`` is never a half-written file; a failed write removes its temporary file. It also holds a
lock on its directory for the whole fit (:class:`DirectoryLock`, with ``filelock``), so a second run into the same
directory is refused instead of overwriting the first one's ``last.ckpt``, and it saves at the batch boundary when
the run receives SIGTERM.

:class:`DialogueTable` logs a table of sampled training dialogues (question, turns, actions, rewards) to Weights &
Biases every N batches and at the end of training, as TRL logs a table of completions.

:class:`RoundProgressBar` is the progress bar of ``tracer-pl``: seconds per step instead of steps per second, and
within a long step the round being played (training) or the problems done (evaluation), which
:class:`~tracer_pl.training.module.TracerModule` reports as a :class:`StepProgress`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from filelock import FileLock, Timeout
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from tracer_pl.core.controllers import controller_table
from tracer_pl.errors import CheckpointError
from tracer_pl.training import run_files


class BatchCheckpoint(L.Callback):
    """Save ``<dirpath>/last.ckpt`` every ``every_n_batches`` training batches and at the end of training.

    On SIGTERM (what schedulers send on preemption) Lightning lets the batch in flight finish and stops; then
    ``last.ckpt`` is saved at that batch boundary and :attr:`preempted` is set (``tracer-pl`` exits with 143).

    The directory belongs to one run (:mod:`tracer_pl.training.run_files`): a fit that does not resume from a
    checkpoint in it is refused when it already holds checkpoints, and a debug run (``fast_dev_run``) saves nothing
    and leaves the directory alone.

    Args:
        dirpath: Directory of the checkpoints.
        every_n_batches: Save after every this many batches (a kill loses at most this many).
        keep_every: Also keep a numbered copy (``step-000012.ckpt``) every this many batches; 0 keeps none.

    Raises:
        CheckpointError: at the start of ``fit``, when ``dirpath`` cannot be written, another process holds it, or
            it holds the checkpoints of another run.
    """

    LOCK_NAME = ".fit.lock"

    def __init__(self, dirpath: str, every_n_batches: int = 10, keep_every: int = 0) -> None:
        if every_n_batches < 1:
            raise ValueError(f"every_n_batches must be at least 1, got {every_n_batches}")
        if keep_every < 0:
            raise ValueError(f"keep_every must be >= 0, got {keep_every}")
        self.dirpath = Path(dirpath)
        self.every_n_batches = every_n_batches
        self.keep_every = keep_every
        self.last_path: Path | None = None
        self.preempted = False
        self._lock: DirectoryLock | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Take the directory's lock (refusing a second fit into it); this also proves the directory writable.

        A trainer that writes checkpoints with Lightning's default ``TorchCheckpointIO`` gets
        :class:`AtomicCheckpointIO` instead (every checkpoint it saves becomes atomic); a ``CheckpointIO`` plugin of
        your own is kept, and decides how files are written.
        """
        if stage != "fit" or getattr(trainer, "fast_dev_run", False):
            return
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        if trainer.is_global_zero and self._lock is None:
            self._lock = DirectoryLock(self.dirpath, self.LOCK_NAME)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Refuse to write into the directory of another run (``trainer.ckpt_path`` is known once it is restored)."""
        self.check_owner(trainer, trainer.ckpt_path)  # every rank: each then stops alike

    def check_owner(self, trainer: L.Trainer, ckpt_path: str | Path | None) -> None:
        """Refuse a fit from ``ckpt_path`` (None: from the start) that would replace another run's checkpoints.

        See :func:`~tracer_pl.training.run_files.check_owner`; a debug run writes nothing, so it is never refused.
        """
        if not trainer.fast_dev_run:
            run_files.check_owner(self.dirpath, ckpt_path)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
                           ) -> None:
        if trainer.fast_dev_run:
            return
        done = trainer.fit_loop.epoch_loop.batch_progress.total.processed
        if done % self.every_n_batches == 0:
            self.save(trainer, "last.ckpt")
        if self.keep_every and done % self.keep_every == 0:
            self.save(trainer, f"step-{done:06d}.ckpt")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.fast_dev_run:
            self.save(trainer, "last.ckpt")

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """On SIGTERM, save: Lightning stops only between batches, so the state is at a batch boundary.

        Any exception ends the fit, so the directory's lock is released here (Lightning skips ``teardown`` then).
        """
        try:
            if isinstance(exception, SIGTERMException) and trainer.state.fn == "fit" and not trainer.fast_dev_run:
                self.save(trainer, "last.ckpt")
                self.preempted = True
        finally:
            self.teardown(trainer, pl_module, "fit")

    def save(self, trainer: L.Trainer, name: str) -> Path:
        """Save with ``trainer.save_checkpoint`` on every rank (collectives); rank 0 writes, atomically (see setup)."""
        path = self.dirpath / name
        trainer.save_checkpoint(path, weights_only=False)
        self.last_path = path
        return path


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made atomic on a local disk: :func:`write_atomically` instead of fsspec.

    Lightning's own writer stages the file in ``$TMPDIR`` and moves it into place, which copies it (not atomic)
    when ``$TMPDIR`` is another file system, fails when ``$TMPDIR`` is full, does not flush it to disk and holds a
    second copy of the checkpoint in memory. Remote paths (``s3://...``) keep Lightning's writer.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        write_atomically(checkpoint, Path(path))


def write_atomically(checkpoint: dict, path: Path) -> None:
    """``torch.save`` to ``.<name>.tmp`` beside ``path``, flush it to disk, rename it into place.

    Raises:
        CheckpointError: when the file cannot be written (full disk, no permission); the temporary file is removed
            and an existing ``path`` is left as it was.
    """
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with temporary.open("wb") as handle:
            torch.save(checkpoint, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise CheckpointError(f"{path}: cannot write the checkpoint ({error.strerror or error}); free space or "
                              "choose another --trainer.default_root_dir; the previous checkpoint is intact") from None


class DirectoryLock:
    """An exclusive lock on ``<directory>/<name>`` held by this process, with ``filelock``.

    ``filelock`` takes an OS lock (``flock`` on Unix, ``LockFileEx`` on Windows) that is released if the process
    dies, and falls back to a marker file where the file system has no locks. The holder writes who it is to
    ``<name>.holder`` beside the lock, so a refused run can name it.

    Raises:
        CheckpointError: when the directory cannot be created or written, or another process holds the lock.
    """

    def __init__(self, directory: Path, name: str) -> None:
        self.path = directory / name
        self.holder = directory / f"{name}.holder"
        self._lock = FileLock(self.path)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self._lock.acquire(timeout=0)
        except Timeout:
            raise CheckpointError(
                f"{directory}: another fit ({self._holder_text()}) is writing checkpoints here; two runs would "
                "overwrite each other's last.ckpt. Wait for it to finish or choose another --trainer.default_root_dir"
            ) from None
        except OSError as error:
            raise CheckpointError(f"{directory}: cannot write checkpoints there ({error.strerror or error}); "
                                  "choose another --trainer.default_root_dir") from None
        with contextlib.suppress(OSError):  # the lock holds without it; a refused run then names "another process"
            self.holder.write_text(f"pid {os.getpid()} on {socket.gethostname()}\n")

    def _holder_text(self) -> str:
        try:
            return self.holder.read_text().strip() or "another process"
        except OSError:
            return "another process"

    def release(self) -> None:
        """Remove the holder note, then release the lock (in that order: the next holder's note stays)."""
        if self._lock.is_locked:
            with contextlib.suppress(OSError):
                self.holder.unlink(missing_ok=True)
            self._lock.release()


class ControllerMonitor(L.Callback):
    """Log, per controller and visited state, visits, average regret and speaking probabilities.

    Keys: ``controller/<name>/<state>/{visits,avg_regret,avg_p_<speaking>,p_<speaking>}`` (see
    :func:`~tracer_pl.core.controllers.controller_table`), logged after every ``every_n_batches`` training batches.

    Args:
        every_n_batches: Log after every this many training batches.
    """

    def __init__(self, every_n_batches: int = 1) -> None:
        if every_n_batches < 1:
            raise ValueError(f"every_n_batches must be at least 1, got {every_n_batches}")
        self.every_n_batches = every_n_batches

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: object, batch: object,
                           batch_idx: int) -> None:
        if (batch_idx + 1) % self.every_n_batches:
            return
        table: dict[str, float] = {}
        for controller in getattr(pl_module, "controllers", ()):
            table.update(controller_table(controller))
        if table:
            pl_module.log_dict(table, on_step=True, on_epoch=False, batch_size=1)


DIALOGUE_COLUMNS = ("batch", "question", "gold", "turns", "actions", "rewards", "final_answer", "correct")
"""Columns of :class:`DialogueTable`, one row per dialogue."""


def dialogue_rows(records: Sequence[Any], batch: int, max_rows: int) -> list[list[Any]]:
    """Rows of :data:`DIALOGUE_COLUMNS` for the first ``max_rows`` dialogue records of a batch.

    ``turns`` gives every round as ``round <r> <role> <action>`` followed by the utterance when one entered the
    dialogue; ``actions`` is the rounds' actions in order (``speak``/``skip``, ``keep``/``refresh``; round 1's
    forced proposal included); ``rewards`` the role reward of each utterance, ``-`` for a silent round.
    """
    rows = []
    for record in records[:max_rows]:
        turns = "\n\n".join(_turn_text(t) for t in record.turns)
        actions = " ".join(t.action for t in record.turns)
        rewards = " ".join("-" if t.reward is None else f"{t.reward:g}" for t in record.turns)
        rows.append([batch, record.problem.question, record.problem.gold, turns, actions, rewards,
                     record.final_answer, bool(record.correct)])
    return rows


def _turn_text(turn: Any) -> str:
    heading = f"round {turn.round} {turn.role} {turn.action}"
    return heading if turn.text is None else f"{heading}:\n{turn.text}"


class DialogueTable(L.Callback):
    """Log sampled training dialogues as a ``wandb.Table`` every ``every_n_batches`` batches and at the end.

    Reads the records that :meth:`~tracer_pl.training.module.TracerModule.training_step` returns and logs them
    through every :class:`~lightning.pytorch.loggers.WandbLogger` of the trainer (other loggers cannot show tables;
    without a W&B logger the callback warns once and logs nothing). Each call logs a new
    table under ``key``, as TRL's ``log_completions`` does. When training ends, the last batch's dialogues are
    logged too unless they just were, so a run shorter than ``every_n_batches`` still logs one table.

    Args:
        every_n_batches: Log after every this many training batches.
        max_rows: Dialogues per table (the first ones of the batch).
        key: The table's name in W&B.
    """

    def __init__(self, every_n_batches: int = 10, max_rows: int = 4, key: str = "train/dialogues") -> None:
        if every_n_batches < 1:
            raise ValueError(f"every_n_batches must be at least 1, got {every_n_batches}")
        if max_rows < 1:
            raise ValueError(f"max_rows must be at least 1, got {max_rows}")
        self.every_n_batches = every_n_batches
        self.max_rows = max_rows
        self.key = key
        self._last: tuple[int, Sequence[Any]] | None = None  # the last batch's number and dialogue records
        self._logged = 0  # the batch whose table was logged last

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._wandb_loggers(trainer):
            warnings.warn("DialogueTable: the trainer has no WandbLogger, so no dialogue table will be logged "
                          "(add configs/loggers/wandb.yaml)", stacklevel=2)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        done = trainer.fit_loop.epoch_loop.batch_progress.total.processed
        records = outputs.get("records") if isinstance(outputs, Mapping) else None
        if not records:
            return
        self._last = (done, records)
        if done % self.every_n_batches == 0:
            self._log(trainer, done, records)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Log the last batch's dialogues unless its table was just logged."""
        if self._last is not None and self._last[0] != self._logged:
            self._log(trainer, *self._last)

    def _log(self, trainer: L.Trainer, batch: int, records: Sequence[Any]) -> None:
        loggers = self._wandb_loggers(trainer)
        if not loggers:
            return
        rows = dialogue_rows(records, batch, self.max_rows)
        for logger in loggers:
            logger.log_table(key=self.key, columns=list(DIALOGUE_COLUMNS), data=rows, step=trainer.global_step)
        self._logged = batch

    @staticmethod
    def _wandb_loggers(trainer: L.Trainer) -> list[WandbLogger]:
        return [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]


@dataclass(frozen=True)
class StepProgress:
    """How far the running training step or evaluation batch has come.

    :class:`~tracer_pl.training.module.TracerModule` hands one to every callback that has an
    ``on_step_progress(trainer, pl_module, progress)`` method: when a step or batch starts, after every dialogue
    round of a training step, and after every model call and every protocol of an evaluation batch. Reporting
    draws no random numbers and changes nothing the run computes.

    Attributes:
        rounds_done: Dialogue rounds of the training step played so far.
        rounds: Rounds in the step (0: the step plays no rounds, as in the single-agent baseline).
        problems_done: Problems of the evaluation batch played to the end, counted once per protocol.
        problems: Problems of the batch times the protocols that play them.
        calls: Model ``generate`` calls made in the evaluation batch so far.
    """

    rounds_done: int = 0
    rounds: int = 0
    problems_done: int = 0
    problems: int = 0
    calls: int = 0

    def describe(self) -> str:
        """``round 3/5`` (the round being played), or ``problems 8/16, 6 model calls`` in evaluation."""
        parts = []
        if self.rounds:
            parts.append(f"round {min(self.rounds_done + 1, self.rounds)}/{self.rounds}")
        if self.problems:
            parts.append(f"problems {self.problems_done}/{self.problems}")
        if self.calls:
            parts.append(f"{self.calls} model call{'' if self.calls == 1 else 's'}")
        return ", ".join(parts)


class Pace:
    """The mean seconds per finished batch of one progress bar, and the time left at that pace.

    Wall time on a monotonic clock from the start of the first batch to the end of the last finished one, so what
    happens between batches (checkpoints) counts; a batch still running is not averaged in, so the rate holds still
    during a long step while the time left counts down.

    Args:
        noun: What a batch is called on the bar (``step``, ``batch``).
        clock: Seconds on a monotonic clock.
    """

    def __init__(self, noun: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.noun = noun
        self.clock = clock
        self.reset()

    def reset(self) -> None:
        self.first_start: float | None = None
        self.running_since: float | None = None
        self.last_end: float | None = None
        self.finished = 0

    def start(self) -> None:
        self.running_since = self.clock()
        if self.first_start is None:
            self.first_start = self.running_since

    def finish(self) -> None:
        if self.first_start is None:  # a batch whose start was not seen: time it from here on
            self.first_start = self.clock()
            return
        self.last_end = self.clock()
        self.running_since = None
        self.finished += 1

    @property
    def seconds(self) -> float | None:
        """Mean seconds per finished batch; None before one has finished."""
        if not self.finished or self.first_start is None or self.last_end is None:
            return None
        return (self.last_end - self.first_start) / self.finished

    def rate_text(self) -> str:
        """``36.1 s/step`` (``? s/step`` before the first batch ends)."""
        seconds = self.seconds
        if seconds is None:
            return f"? s/{self.noun}"
        return f"{seconds:.0f} s/{self.noun}" if seconds >= 100 else f"{seconds:.3g} s/{self.noun}"

    def left_text(self, done: float, total: float | None) -> str:
        """The time the batches after ``done`` of ``total`` take at this pace, less what the running one took."""
        seconds = self.seconds
        if seconds is None or not total:
            return "?"
        left = seconds * (total - done)
        if self.running_since is not None:
            left -= self.clock() - self.running_since
        return Tqdm.format_interval(max(left, 0.0))


class _Bar(Tqdm):
    """A Lightning tqdm bar with a :class:`Pace` (``{pace}``, ``{left}``) and the step's progress after its name."""

    def __init__(self, *args: Any, noun: str, **kwargs: Any) -> None:
        self.pace = Pace(noun)
        self.within = ""
        super().__init__(*args, **kwargs)

    @property
    def format_dict(self) -> dict[str, Any]:
        values = super().format_dict
        if self.within:  # after the name, before the ": " that tqdm's set_description adds
            name = (values.get("prefix") or "").removesuffix(": ")
            values["prefix"] = f"{name}, {self.within}: " if name else f"{self.within}: "
        values["pace"] = self.pace.rate_text()
        values["left"] = self.pace.left_text(values["n"], values["total"])
        return values


class RoundProgressBar(TQDMProgressBar):
    """Lightning's tqdm progress bar in seconds per step, moving within a step (the default of ``tracer-pl``).

    Lightning's bars show steps per second, which reads ``0.00it/s`` with no time left once a step takes more than
    a few seconds, and they move only when a batch ends. This one shows the mean seconds per training step (per
    batch in evaluation) and the time left at that pace, and while a step runs, the round being played
    (``Epoch 0, round 3/5``) or in evaluation the problems done and the model calls made (``Testing DataLoader 0,
    problems 8/16, 6 model calls``), from the :class:`StepProgress` that
    :class:`~tracer_pl.training.module.TracerModule` reports. It reads a monotonic clock and nothing else.

    Args:
        refresh_rate: Redraw after every this many batches (0 hides the bar), as Lightning's ``TQDMProgressBar``.
        process_position: Lines to offset the bar by, as Lightning's.
        leave: Leave the finished bar of every epoch on screen, as Lightning's.
    """

    BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{left}, {pace}{postfix}]"

    def _bar(self, description: str, noun: str, offset: int = 0, leave: bool = True) -> _Bar:
        return _Bar(desc=description, noun=noun, position=2 * self.process_position + offset,
                    disable=self.is_disabled, leave=leave, dynamic_ncols=True, file=sys.stdout,
                    bar_format=self.BAR_FORMAT)

    def init_sanity_tqdm(self) -> _Bar:
        return self._bar(self.sanity_check_description, "batch", leave=False)

    def init_train_tqdm(self) -> _Bar:
        return self._bar(self.train_description, "step")

    def init_validation_tqdm(self) -> _Bar:
        has_main_bar = self.trainer.state.fn != "validate"  # as Lightning's: below the training bar during fit
        return self._bar(self.validation_description, "batch", offset=int(has_main_bar), leave=not has_main_bar)

    def init_test_tqdm(self) -> _Bar:
        return self._bar(self.test_description, "batch")

    def on_step_progress(self, trainer: L.Trainer, pl_module: L.LightningModule, progress: StepProgress) -> None:
        """Show how far the running step or batch has come, after the bar's name."""
        bar = self._running_bar(trainer)
        if isinstance(bar, _Bar) and not bar.disable:
            bar.within = progress.describe()
            bar.refresh()

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        _pace(self.train_progress_bar, "reset")

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
                             ) -> None:
        _pace(self.train_progress_bar, "start")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        _pace(self.train_progress_bar, "finish")
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        super().on_validation_batch_start(trainer, pl_module, batch, batch_idx, dataloader_idx)
        _pace(self.val_progress_bar, "reset" if batch_idx == 0 else None, "start")

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        _pace(self.val_progress_bar, "finish")
        super().on_validation_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)

    def on_test_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int,
                            dataloader_idx: int = 0) -> None:
        super().on_test_batch_start(trainer, pl_module, batch, batch_idx, dataloader_idx)
        _pace(self.test_progress_bar, "reset" if batch_idx == 0 else None, "start")

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        _pace(self.test_progress_bar, "finish")
        super().on_test_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)

    def _running_bar(self, trainer: L.Trainer) -> Any:
        """The bar of the loop that is running (None before it exists)."""
        name = "test" if trainer.testing else "val" if trainer.validating or trainer.sanity_checking else "train"
        try:
            return getattr(self, f"{name}_progress_bar")
        except TypeError:  # Lightning's properties raise when the bar was not created
            return None


def _pace(bar: Any, *steps: str | None) -> None:
    """Apply ``reset``/``start``/``finish`` to a bar's pace; a step also clears the step's progress text."""
    if not isinstance(bar, _Bar):
        return
    for step in steps:
        if step is not None:
            getattr(bar.pace, step)()
    bar.within = ""
