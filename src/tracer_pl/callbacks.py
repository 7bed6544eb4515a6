"""Training callbacks.

:class:`ControllerMonitor` logs every controller's regret table per state through the trainer's loggers (CSV,
TensorBoard, ...): the data of the regret-convergence and speak-rate plots of ``tracer-pl report``.

:class:`BatchCheckpoint` saves every N training *batches*. Lightning's ``ModelCheckpoint(every_n_train_steps)``
counts optimizer steps, and with manual optimization one batch makes zero to several of them (one per role per
speaking round with signal), so it cannot promise a save "every N steps" here. The checkpoint is written to a
temporary file and renamed into place, so ``last.ckpt`` is never a half-written file.
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L

from tracer_pl.controllers import controller_table


class BatchCheckpoint(L.Callback):
    """Save ``<dirpath>/last.ckpt`` every ``every_n_batches`` training batches and at the end of training.

    Args:
        dirpath: Directory of the checkpoints.
        every_n_batches: Save after every this many batches (a kill loses at most this many).
        keep_every: Also keep a numbered copy (``step-000012.ckpt``) every this many batches; 0 keeps none.
    """

    def __init__(self, dirpath: str, every_n_batches: int = 10, keep_every: int = 0) -> None:
        if every_n_batches < 1:
            raise ValueError(f"every_n_batches must be at least 1, got {every_n_batches}")
        self.dirpath = Path(dirpath)
        self.every_n_batches = every_n_batches
        self.keep_every = keep_every
        self.last_path: Path | None = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
                           ) -> None:
        done = trainer.fit_loop.epoch_loop.batch_progress.total.processed
        if done % self.every_n_batches == 0:
            self.save(trainer, "last.ckpt")
        if self.keep_every and done % self.keep_every == 0:
            self.save(trainer, f"step-{done:06d}.ckpt")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.save(trainer, "last.ckpt")

    def save(self, trainer: L.Trainer, name: str) -> Path:
        """Write the checkpoint atomically: to a temporary file on the same disk, then ``os.replace``."""
        path = self.dirpath / name
        if trainer.is_global_zero:
            path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{name}.tmp")
        trainer.save_checkpoint(temporary)
        if trainer.is_global_zero:
            os.replace(temporary, path)
        trainer.strategy.barrier("tracer_checkpoint")
        self.last_path = path
        return path


class ControllerMonitor(L.Callback):
    """Log, per controller and visited state, visits, average regret and speaking probabilities.

    Keys: ``controller/<name>/<state>/{visits,avg_regret,avg_p_<speaking>,p_<speaking>}`` (see
    :func:`~tracer_pl.controllers.controller_table`), logged after every ``every_n_batches`` training batches.

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
