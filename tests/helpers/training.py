"""The one ``fit`` of the tests that train a ``TracerModule`` in-process with a Lightning ``Trainer``."""

from pathlib import Path

import lightning as L

from tracer_pl.training.callbacks import BatchCheckpoint
from tracer_pl.training.module import TracerModule


def fit(root, data, *, batches, seed, ckpt_path=None, callbacks=(), checkpoint_every=None, keep_every=0,
        **settings):
    """Seed, build ``TracerModule(**settings)`` and fit it on ``data`` for ``batches`` batches of one epoch.

    The module is built after seeding, so its initial adapters and controller RNGs follow ``seed``. No logger,
    progress bar or Lightning checkpointing; with ``checkpoint_every``, a ``BatchCheckpoint`` writes to
    ``root/checkpoints`` every that many batches (keeping every ``keep_every``-th). ``data`` is a data module
    or a training ``DataLoader``.

    Returns:
        ``(module, trainer)`` after ``trainer.fit``.
    """
    L.seed_everything(seed)
    module = TracerModule(**settings)
    callbacks = list(callbacks)
    if checkpoint_every:
        callbacks.append(BatchCheckpoint(str(Path(root) / "checkpoints"), every_n_batches=checkpoint_every,
                                         keep_every=keep_every))
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=batches, logger=False,
                        default_root_dir=root, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=callbacks)
    trainer.fit(module, data, ckpt_path=ckpt_path)
    return module, trainer


class StepCounter(L.Callback):
    """Adds up the GSPO optimizer steps each training step reports, per role."""

    def __init__(self):
        self.steps = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        for key, value in pl_module.last_step_statistics.items():
            if key.endswith("/steps"):
                role = key.split("/")[1]
                self.steps[role] = self.steps.get(role, 0) + int(value)


def unrun_checkpoint(config_args):
    """What a fit of the CLI configuration ``config_args`` saves, built without running it: its hyperparameters,
    its data position (2 problems consumed) and run settings, sealed as a real checkpoint is."""
    from tracer_pl.cli import build_cli
    from tracer_pl.training import checkpoints

    cli = build_cli(list(config_args), run=False)  # run=False takes no subcommand
    checkpoint = {
        "state_dict": {},
        "pytorch-lightning_version": L.__version__,
        "hyper_parameters": dict(cli.model.hparams),
        "ReasoningDataModule": {"consumed": 2, "settings": cli.datamodule.resume_settings()},
        checkpoints.RUN_KEY: checkpoints.run_settings(cli.trainer),
    }
    checkpoints.seal(checkpoint)
    return checkpoint
