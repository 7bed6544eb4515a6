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

import json
import logging
import os
import re
import sys
import warnings
from argparse import SUPPRESS
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from jsonargparse import set_parsing_settings
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from tracer_pl.data.datamodule import ReasoningDataModule
from tracer_pl.errors import CheckpointError, ConfigError, DataError, PreemptedError, TracerError
from tracer_pl.training import checkpoints
from tracer_pl.training.callbacks import BatchCheckpoint, RoundProgressBar
from tracer_pl.training.evaluation import Stage, stage_metrics, write_metrics
from tracer_pl.training.module import TracerModule, check_strategy

PREEMPTED_EXIT_CODE = 143
"""Exit code of a run stopped by SIGTERM after saving (128 + 15, the shell's code for a SIGTERM)."""

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
        super().parse_arguments(parser, args)

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

    def _parse_ckpt_path(self) -> None:
        """Keep the configured settings when ``--ckpt_path`` is given.

        Lightning would replace the parsed model settings with the hyperparameters stored in the checkpoint,
        so ``test --ckpt_path ... --model.evaluation.method cot`` would silently run TRACER. Here the config and
        the command line define the run, and :meth:`TracerModule.on_load_checkpoint` refuses a checkpoint whose
        adapters do not fit the configured backbone.
        """

    def fit(self, model: TracerModule, datamodule: ReasoningDataModule | None = None, ckpt_path: str | None = None,
            **kwargs: Any) -> None:
        """``trainer.fit`` with the checkpoint checked first, ``last`` found, and SIGTERM turned into an exit code.

        ``--ckpt_path last`` resumes from the :class:`BatchCheckpoint`'s ``last.ckpt`` (Lightning alone looks only
        for ``ModelCheckpoint`` files); when there is none yet, the run starts from the beginning, as a requeued
        job's first attempt should.
        """
        _check_trainer_limits(self.trainer)
        check_strategy(self.trainer.strategy)
        ckpt_path = self._resolve(ckpt_path)
        self._check_checkpoint(ckpt_path, model, datamodule, resuming=True)
        kwargs["weights_only"] = True
        try:
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
            path = Path(self.trainer.log_dir) / "fit_status.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"status": status, "batches": batches}) + "\n")

    def validate(self, model: TracerModule, datamodule: ReasoningDataModule | None = None,
                 ckpt_path: str | None = None, **kwargs: Any) -> None:
        ckpt_path = self._resolve(ckpt_path)
        self._check_checkpoint(ckpt_path, model, datamodule, resuming=False)
        kwargs.update(weights_only=True, verbose=False)  # after_validate prints the summary
        self.trainer.validate(model, datamodule=datamodule, ckpt_path=ckpt_path, **kwargs)

    def test(self, model: TracerModule, datamodule: ReasoningDataModule | None = None, ckpt_path: str | None = None,
             **kwargs: Any) -> None:
        ckpt_path = self._resolve(ckpt_path)
        self._check_checkpoint(ckpt_path, model, datamodule, resuming=False)
        kwargs.update(weights_only=True, verbose=False)  # after_test prints the summary
        self.trainer.test(model, datamodule=datamodule, ckpt_path=ckpt_path, **kwargs)

    def _resolve(self, ckpt_path: str | None) -> str | None:
        """The checkpoint file ``--ckpt_path`` means (``last``: the BatchCheckpoint's ``last.ckpt``)."""
        if ckpt_path == "last":
            found = [cb.dirpath / "last.ckpt" for cb in self.trainer.callbacks if isinstance(cb, BatchCheckpoint)]
            existing = [path for path in found if path.exists()]
            if existing:
                ckpt_path = str(existing[0])
            elif found:
                if self.subcommand != "fit":
                    raise CheckpointError(f"--ckpt_path last: no checkpoint in {found[0].parent} yet")
                print(f"tracer-pl: --ckpt_path last: no checkpoint in {found[0].parent} yet; starting from the start")
                return None
            else:
                return ckpt_path  # Lightning's ModelCheckpoint handles "last"
        return ckpt_path

    def _check_checkpoint(self, ckpt_path: str | None, model: TracerModule, datamodule: Any, resuming: bool) -> None:
        """Read and verify the checkpoint file before the model loads.

        One-line errors for a missing, empty or damaged file, for adapters that do not fit the backbone, and, when
        ``resuming``, for an experiment that differs (see :mod:`tracer_pl.training.checkpoints`).
        """
        if ckpt_path is None or ckpt_path in ("best", "hpc", "registry", "last"):
            return
        checkpoint = checkpoints.read(ckpt_path)
        checkpoints.check_model(checkpoint, model.hparams, resuming=resuming)
        if not resuming:
            return
        checkpoints.check_run(checkpoint, self.trainer)
        data_state = checkpoint.get(type(datamodule).__qualname__) if datamodule is not None else None
        if isinstance(data_state, dict) and "settings" in data_state:
            checkpoints.check_data(data_state["settings"], datamodule.resume_settings(self.trainer.world_size))
        _refuse_finished(ckpt_path, checkpoint, self.trainer)

    def _preempted_message(self) -> str:
        saved = [cb.last_path for cb in self.trainer.callbacks if isinstance(cb, BatchCheckpoint) and cb.preempted]
        done = self.trainer.fit_loop.epoch_loop.batch_progress.total.processed
        where = f"saved {saved[0]} after batch {done}" if saved else "no checkpoint was saved (no BatchCheckpoint)"
        return (f"stopped by SIGTERM: {where}; resume with the same command and --ckpt_path last "
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


def _check_trainer_limits(trainer: Any) -> None:
    """Refuse trainer settings that would make ``fit`` train nothing, before the model loads."""
    for flag, value in (("limit_train_batches", trainer.limit_train_batches), ("max_epochs", trainer.max_epochs),
                        ("max_steps", trainer.max_steps)):
        if value == 0:
            raise ConfigError(f"--trainer.{flag} is 0: fit would train nothing")


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


if __name__ == "__main__":
    main()
