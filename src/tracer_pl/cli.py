"""``tracer-pl``: the command line, a ``LightningCLI`` over :class:`TracerModule` and :class:`ReasoningDataModule`.

``tracer-pl fit -c configs/quickstart.yaml``, ``tracer-pl test -c ... --ckpt_path ...``, ``validate``,
``tracer-pl report RUN_DIR ... --out DIR`` (see :mod:`tracer_pl.report`),
``--print_config``; every field can be overridden (``--model.dialogue.group_size=8``). Configs may use OmegaConf
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

from tracer_pl.callbacks import BatchCheckpoint
from tracer_pl.data import ReasoningDataModule
from tracer_pl.errors import TracerError
from tracer_pl.module import TracerModule


class TracerCLI(LightningCLI):
    """LightningCLI that, after each run, tells where its checkpoints, adapters and metrics are."""

    def _parse_ckpt_path(self) -> None:
        """Keep the configured settings when ``--ckpt_path`` is given.

        Lightning would replace the parsed model settings with the hyperparameters stored in the checkpoint,
        so ``test --ckpt_path ... --model.evaluation.method cot`` would silently run TRACER. Here the config and
        the command line define the run, and :meth:`TracerModule.on_load_checkpoint` refuses a checkpoint whose
        adapters do not fit the configured backbone.
        """

    def after_fit(self) -> None:
        trainer = self.trainer
        lines = [f"log directory:  {trainer.log_dir}"]
        saved = [cb.last_path for cb in trainer.callbacks if isinstance(cb, BatchCheckpoint) and cb.last_path]
        saved += [cb.last_model_path for cb in trainer.checkpoint_callbacks if getattr(cb, "last_model_path", "")]
        lines += [f"checkpoint:     {path}" for path in saved]
        adapters = getattr(self.model, "exported_adapters", None)
        if adapters:
            lines += [f"{role} adapter:  {path}" for role, path in adapters.items()]
        _report("fit finished", lines)

    def after_test(self) -> None:
        self._write_metrics("test")

    def after_validate(self) -> None:
        self._write_metrics("val")

    def _write_metrics(self, stage: str) -> None:
        metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith(f"{stage}/")}
        directory = Path(self.trainer.log_dir or ".")
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{stage}_metrics.json"
        path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        lines = [f"{k} = {v:.4f}" for k, v in sorted(metrics.items())] + [f"metrics: {path}"]
        if not metrics:
            lines.insert(0, f"no {stage} batches ran: check --trainer.limit_{stage}_batches (0 in some configs)")
        _report(f"{stage} finished", lines)


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

    ``tracer-pl report RUN_DIR ...`` goes to :mod:`tracer_pl.report`; everything else to the LightningCLI.
    """
    try:
        if sys.argv[1:2] == ["report"]:
            from tracer_pl.report import main as report

            report(sys.argv[2:])
            return
        build_cli()
    except TracerError as error:
        print(f"tracer-pl: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
