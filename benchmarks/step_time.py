"""Wall time per training step and peak memory of a config, measured with the real CLI.

    python benchmarks/step_time.py configs/quickstart.yaml [--batches 3] [-- extra CLI args]

Prints one JSON object on its last line: seconds per training batch (after the first, which includes warm-up),
the completion tokens generated and the GSPO optimizer steps taken per batch (over the same batches), the largest
``gspo/<role>/sampling_logp_mismatch`` logged (how far the sampler's log-probabilities were from the training
model's; None when the engine reports none), the whole fit time and the process's peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import lightning as L
from _common import peak_rss_gb

from tracer_pl.cli import build_cli


class BatchTimer(L.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self.tokens: list[float] = []
        self.gspo_steps: list[float] = []
        self.mismatch: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.times.append(time.perf_counter() - self._start)
        metrics = trainer.callback_metrics
        per_problem = float(metrics.get("train/completion_tokens_per_problem", 0.0))
        self.tokens.append(per_problem * len(batch))
        steps = [float(v) for k, v in metrics.items() if k.startswith("gspo/") and k.endswith("/steps")]
        self.gspo_steps.append(sum(steps))
        self.mismatch += [float(v) for k, v in metrics.items() if k.endswith("/sampling_logp_mismatch")]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("--batches", type=int, default=3)
    args, extra = parser.parse_known_args()
    extra = [arg for arg in extra if arg != "--"]
    timer = BatchTimer()
    root = tempfile.mkdtemp(prefix="tracer-step-time-")
    start = time.perf_counter()
    cli = build_cli(["-c", args.config, f"--trainer.limit_train_batches={args.batches}",
                     f"--trainer.default_root_dir={root}", "--trainer.logger=false", "--trainer.callbacks=[]",
                     "--trainer.enable_progress_bar=false", *extra], run=False)
    cli.trainer.callbacks.append(timer)
    cli.trainer.fit(cli.model, cli.datamodule)
    steady = timer.times[1:] or timer.times
    tokens = timer.tokens[1:] or timer.tokens
    gspo_steps = timer.gspo_steps[1:] or timer.gspo_steps
    result = {
        "config": args.config,
        "batch_size": cli.datamodule.batch_size,
        "seconds_per_batch": sum(steady) / len(steady),
        "first_batch_seconds": timer.times[0],
        "generated_tokens_per_batch": sum(tokens) / len(tokens),
        "gspo_steps_per_batch": sum(gspo_steps) / len(gspo_steps),
        "sampling_logp_mismatch": max(timer.mismatch) if timer.mismatch else None,
        "fit_seconds": time.perf_counter() - start,
        "peak_rss_gb": peak_rss_gb(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
