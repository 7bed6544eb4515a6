"""Where a training step's time goes: generation, log-prob forward, backward, optimizer, controllers, rewards.

    python benchmarks/profile_step.py [--quick] [--configs configs/tiny.yaml configs/quickstart.yaml] [--batches 4]

Each config trains for ``--batches`` batches in its own process through the real CLI, with timers around
``HFPolicy.generate``, ``HFPolicy.token_logprobs`` (the GSPO forward), ``manual_backward``, the Adam step
(with gradient clipping), the controllers (act/update/flush) and the roles (parse/reward, including answer
grading). ``other`` is the rest of the step (Lightning, logging, the dialogue's bookkeeping). The first batch is
warm-up and is left out. The last output line is JSON.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from functools import wraps

from _common import benchmark_parser, emit, machine, peak_memory_gb, run_child

TOTALS: dict[str, float] = defaultdict(float)
ACTIVE: set[str] = set()


def timed(owner, name: str, category: str) -> None:
    """Wrap ``owner.name`` so its time adds to ``category`` (outermost call only)."""
    original = getattr(owner, name)

    @wraps(original)
    def wrapper(*args, **kwargs):
        if category in ACTIVE:
            return original(*args, **kwargs)
        ACTIVE.add(category)
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            TOTALS[category] += time.perf_counter() - start
            ACTIVE.discard(category)

    setattr(owner, name, wrapper)


def profile(config: str, batches: int) -> dict:
    import lightning as L
    import torch

    from tracer_pl.cli import build_cli
    from tracer_pl.core.controllers import Controller
    from tracer_pl.core.roles import Role
    from tracer_pl.engines.hf.policy import HFPolicy
    from tracer_pl.training.module import TracerModule

    timed(HFPolicy, "generate", "generate")
    timed(HFPolicy, "token_logprobs", "logprob_forward")
    timed(TracerModule, "manual_backward", "backward")
    timed(TracerModule, "clip_gradients", "optimizer")
    timed(torch.optim.Adam, "step", "optimizer")
    for method in ("act", "update", "flush"):
        timed(Controller, method, "controllers")
    for method in ("parse", "reward", "score"):
        timed(Role, method, "rewards_and_parsing")

    class Steps(L.Callback):
        def __init__(self) -> None:
            self.rows: list[dict[str, float]] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            TOTALS.clear()
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            row = dict(TOTALS)
            row["total"] = time.perf_counter() - self.start
            row["other"] = row["total"] - sum(v for k, v in TOTALS.items())
            self.rows.append(row)

    steps = Steps()
    cli = build_cli(["-c", config, f"--trainer.limit_train_batches={batches}",
                     f"--trainer.default_root_dir={tempfile.mkdtemp()}", "--trainer.logger=false",
                     "--trainer.callbacks=[]", "--trainer.enable_progress_bar=false", "--trainer.accelerator=auto"],
                    run=False)
    cli.trainer.callbacks.append(steps)
    cli.trainer.fit(cli.model, cli.datamodule)
    steady = steps.rows[1:] or steps.rows
    keys = sorted({k for row in steady for k in row})
    seconds = {k: sum(row.get(k, 0.0) for row in steady) / len(steady) for k in keys}
    return {"config": config, "batch_size": cli.datamodule.batch_size, "batches_timed": len(steady),
            "seconds_per_step": seconds,
            "fraction": {k: v / seconds["total"] for k, v in seconds.items() if k != "total"},
            "peak_memory_gb": peak_memory_gb()}


def main() -> None:
    parser = benchmark_parser(__doc__, "3 tiny batches and 2 quickstart batches", model=False)
    parser.add_argument("--configs", nargs="+", default=["configs/tiny.yaml", "configs/quickstart.yaml"])
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        emit(profile(args.child, args.batches))
        return
    runs = []
    for config in args.configs:
        batches = (3 if "tiny" in config else 2) if args.quick else args.batches
        runs.append(run_child("profile_step.py", "--child", config, "--batches", str(batches)))
    emit({"benchmark": "profile_step", "command": " ".join(["python", "benchmarks/profile_step.py", *sys.argv[1:]]),
          "quick": args.quick, "runs": runs, "machine": machine()})


if __name__ == "__main__":
    main()
