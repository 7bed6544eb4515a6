"""``tracer-pl``: the command line, a ``LightningCLI`` over :class:`TracerModule` and :class:`ReasoningDataModule`.

``tracer-pl fit -c configs/quickstart.yaml``, ``tracer-pl test -c ... --ckpt_path ...``, ``validate``,
``tracer-pl report RUN_DIR ... --out DIR`` (see :mod:`tracer_pl.reporting.report`),
``--print_config``; every field can be overridden (``--model.gspo.group_size=8``). Configs may use OmegaConf
interpolation (``${trainer.default_root_dir}/checkpoints``); it is resolved after every config file and
command-line argument is read, so ``--trainer.default_root_dir runs/mine`` also moves the logs and checkpoints.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from jsonargparse import set_parsing_settings
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

from tracer_pl.data.datamodule import ReasoningDataModule
from tracer_pl.errors import CheckpointError, ConfigError, DataError, PreemptedError, TracerError
from tracer_pl.training import checkpoints
from tracer_pl.training.callbacks import BatchCheckpoint
from tracer_pl.training.evaluation import Stage, stage_metrics, write_metrics
from tracer_pl.training.module import TracerModule

PREEMPTED_EXIT_CODE = 143
"""Exit code of a run stopped by SIGTERM after saving (128 + 15, the shell's code for a SIGTERM)."""


class TracerCLI(LightningCLI):
    """LightningCLI that, after each run, tells where its checkpoints, adapters and metrics are."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """fit, validate and test (``predict`` is not offered: TracerModule has nothing to predict)."""
        return {name: keys for name, keys in LightningCLI.subcommands().items() if name != "predict"}

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
        kwargs["weights_only"] = True
        self.trainer.validate(model, datamodule=datamodule, ckpt_path=ckpt_path, **kwargs)

    def test(self, model: TracerModule, datamodule: ReasoningDataModule | None = None, ckpt_path: str | None = None,
             **kwargs: Any) -> None:
        ckpt_path = self._resolve(ckpt_path)
        self._check_checkpoint(ckpt_path, model, datamodule, resuming=False)
        kwargs["weights_only"] = True
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
        lines = [f"{k} = {v:.4f}" for k, v in sorted(metrics.items())] + [f"metrics: {path}"]
        if not metrics:
            lines.insert(0, f"no {stage} batches ran: check --trainer.limit_{stage}_batches (0 in some configs)")
        _report(f"{stage} finished", lines)


def _innermost_reason(error: BaseException) -> str:
    """The first specific reason in a jsonargparse error chain (its own messages list them as ``  - reason``)."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    text = str(error)
    reasons = [line.strip()[2:] for line in text.splitlines() if line.strip().startswith("- ")]
    return reasons[0] if reasons else text.splitlines()[0] if text else type(error).__name__


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


def build_cli(args: Any = None, run: bool = True) -> TracerCLI:
    """Build (and by default run) the CLI; ``args`` as for ``LightningCLI`` (list of strings or a dict)."""
    # interpolations like ${trainer.default_root_dir} name keys from the config's root, not the subcommand's
    set_parsing_settings(omegaconf_absolute_to_relative_paths=True)
    return TracerCLI(
        TracerModule,
        ReasoningDataModule,
        parser_kwargs={"parser_mode": "omegaconf+"},
        seed_everything_default=42,
        save_config_kwargs={"overwrite": True},
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
