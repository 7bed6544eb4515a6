"""Training callbacks.

:class:`ControllerMonitor` logs every controller's regret table per state through the trainer's loggers (CSV,
TensorBoard, ...): the data of the regret-convergence and speak-rate plots of ``tracer-pl report``.

:class:`BatchCheckpoint` saves every N training *batches*. Lightning's ``ModelCheckpoint(every_n_train_steps)``
counts optimizer steps, and with manual optimization one batch makes zero to several of them (one per role per
speaking round with signal), so it cannot promise a save "every N steps" here. The checkpoint is written to a
temporary file beside the target (never in ``$TMPDIR``: a small ``/tmp`` must not break saves) and renamed into
place, so ``last.ckpt`` is never a half-written file; a failed write removes its temporary file. It also holds a
lock on its directory for the whole fit, so a second run into the same directory is refused instead of
overwriting the first one's ``last.ckpt``, and it saves at the batch boundary when the run receives SIGTERM.

:class:`DialogueTable` logs a table of sampled training dialogues (question, turns, actions, rewards) to Weights &
Biases every N batches, as TRL logs a table of completions.
"""

from __future__ import annotations

import os
import socket
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from tracer_pl.core.controllers import controller_table
from tracer_pl.errors import CheckpointError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs into one directory are not detected there
    fcntl = None  # type: ignore[assignment]


class BatchCheckpoint(L.Callback):
    """Save ``<dirpath>/last.ckpt`` every ``every_n_batches`` training batches and at the end of training.

    On SIGTERM (what schedulers send on preemption) Lightning lets the batch in flight finish and stops; then
    ``last.ckpt`` is saved at that batch boundary and :attr:`preempted` is set (``tracer-pl`` exits with 143).

    Args:
        dirpath: Directory of the checkpoints.
        every_n_batches: Save after every this many batches (a kill loses at most this many).
        keep_every: Also keep a numbered copy (``step-000012.ckpt``) every this many batches; 0 keeps none.

    Raises:
        CheckpointError: at the start of ``fit``, when ``dirpath`` cannot be written or another run holds it.
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
        """Take the directory's lock (refusing a second fit into it); this also proves the directory writable."""
        if stage == "fit" and trainer.is_global_zero and self._lock is None:
            self._lock = DirectoryLock(self.dirpath, self.LOCK_NAME)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
                           ) -> None:
        done = trainer.fit_loop.epoch_loop.batch_progress.total.processed
        if done % self.every_n_batches == 0:
            self.save(trainer, "last.ckpt")
        if self.keep_every and done % self.keep_every == 0:
            self.save(trainer, f"step-{done:06d}.ckpt")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.save(trainer, "last.ckpt")

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """On SIGTERM, save: Lightning stops only between batches, so the state is at a batch boundary.

        Any exception ends the fit, so the directory's lock is released here (Lightning skips ``teardown`` then).
        """
        try:
            if isinstance(exception, SIGTERMException) and trainer.state.fn == "fit":
                self.save(trainer, "last.ckpt")
                self.preempted = True
        finally:
            self.teardown(trainer, pl_module, "fit")

    def save(self, trainer: L.Trainer, name: str) -> Path:
        """Write the checkpoint atomically: to a temporary file in the same directory, then ``os.replace``."""
        path = self.dirpath / name
        checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)  # every rank: collectives
        if trainer.is_global_zero:
            write_atomically(checkpoint, path)
        trainer.strategy.barrier("tracer_checkpoint")
        self.last_path = path
        return path


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
    """An exclusive lock on ``<directory>/<name>`` held by this process (released by the OS if it dies).

    Raises:
        CheckpointError: when the directory cannot be created or written, or another process holds the lock.
    """

    def __init__(self, directory: Path, name: str) -> None:
        self.path = directory / name
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self._handle = self.path.open("a+")
        except OSError as error:
            raise CheckpointError(f"{directory}: cannot write checkpoints there ({error.strerror or error}); "
                                  "choose another --trainer.default_root_dir") from None
        try:
            if fcntl is not None:
                fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._handle.seek(0)
            holder = self._handle.read().strip() or "another process"
            self._handle.close()
            raise CheckpointError(
                f"{directory}: another fit ({holder}) is writing checkpoints here; two runs would overwrite each "
                "other's last.ckpt. Wait for it to finish or choose another --trainer.default_root_dir"
            ) from None
        self._handle.seek(0)
        self._handle.truncate()
        self._handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        self._handle.flush()

    def release(self) -> None:
        if not self._handle.closed:
            if fcntl is not None:
                fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()


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
    """Log sampled training dialogues as a ``wandb.Table`` every ``every_n_batches`` batches.

    Reads the records that :meth:`~tracer_pl.training.module.TracerModule.training_step` returns and logs them
    through every :class:`~lightning.pytorch.loggers.WandbLogger` of the trainer (other loggers cannot show tables;
    without a W&B logger the callback warns once and logs nothing). Each call logs a new
    table under ``key``, as TRL's ``log_completions`` does.

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

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._wandb_loggers(trainer):
            warnings.warn("DialogueTable: the trainer has no WandbLogger, so no dialogue table will be logged "
                          "(add configs/loggers/wandb.yaml)", stacklevel=2)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        done = trainer.fit_loop.epoch_loop.batch_progress.total.processed
        records = outputs.get("records") if isinstance(outputs, Mapping) else None
        loggers = self._wandb_loggers(trainer)
        if done % self.every_n_batches or not records or not loggers:
            return
        rows = dialogue_rows(records, done, self.max_rows)
        for logger in loggers:
            logger.log_table(key=self.key, columns=list(DIALOGUE_COLUMNS), data=rows, step=trainer.global_step)

    @staticmethod
    def _wandb_loggers(trainer: L.Trainer) -> list[WandbLogger]:
        return [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
