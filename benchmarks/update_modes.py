"""What one GSPO update per candidate group costs against one update per round over all groups.

    python benchmarks/update_modes.py [--quick] [--model smollm2-135m-instruct] [--batch-size 4] [--batches 4]

``gspo.update_per: group`` (the default, the paper's step count) takes an optimizer step for each candidate
group with signal; ``round`` takes one step over all of a round's groups. Both modes train the same config
(``configs/quickstart.yaml`` with the model, batch size and token limit given here) for ``--batches`` batches,
each in its own process, with timers around the training step, ``HFPolicy.generate`` and the GSPO updates. The
first batch is warm-up and left out. Reported per mode: seconds per training step, of which generation and of
which GSPO, optimizer steps per training step, and seconds per optimizer step. The last output line is JSON.
"""

from __future__ import annotations

import argparse
import sys
import time

from _common import benchmark_parser, emit, fit_quickstart, machine, peak_memory_gb, run_child, timed


def child(mode: str, model: str, batch_size: int, batches: int, max_new_tokens: int) -> dict:
    import lightning as L

    from tracer_pl.engines.hf.policy import HFPolicy
    from tracer_pl.training.gspo_update import GSPOUpdate

    totals = {"generate": 0.0, "gspo": 0.0}

    timed(HFPolicy, "generate", totals, "generate")
    timed(GSPOUpdate, "step", totals, "gspo")

    class Steps(L.Callback):
        def __init__(self) -> None:
            self.rows: list[dict[str, float]] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self._start = time.perf_counter()
            self._before = dict(totals)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            steps = sum(v for k, v in pl_module.last_step_statistics.items() if k.endswith("/steps"))
            self.rows.append({"seconds": time.perf_counter() - self._start, "optimizer_steps": steps,
                              **{k: totals[k] - self._before[k] for k in totals}})

    steps = Steps()
    fit_quickstart([f"--model.backbone.name={model}",
                    f"--model.backbone.max_new_tokens={max_new_tokens}", f"--model.gspo.update_per={mode}",
                    f"--data.batch_size={batch_size}", f"--trainer.limit_train_batches={batches}"],
                   steps, "tracer-update-modes-")
    timed_rows = steps.rows[1:] or steps.rows
    n = len(timed_rows)
    total = {k: sum(r[k] for r in timed_rows) for k in timed_rows[0]}
    return {"mode": mode, "timed_steps": n, "seconds_per_step": total["seconds"] / n,
            "generate_seconds_per_step": total["generate"] / n, "gspo_seconds_per_step": total["gspo"] / n,
            "optimizer_steps_per_step": total["optimizer_steps"] / n,
            "seconds_per_optimizer_step": total["gspo"] / total["optimizer_steps"] if total["optimizer_steps"]
            else None, "peak_memory_gb": peak_memory_gb()}


def main() -> None:
    parser = benchmark_parser(__doc__, "2 timed batches of 2 problems, 24 new tokens")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--batches", type=int, default=4, help="training batches per mode (the first is warm-up)")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--child", choices=("group", "round"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.batch_size, args.batches, args.max_new_tokens = 2, 3, 24
    if args.child:
        emit(child(args.child, args.model, args.batch_size, args.batches, args.max_new_tokens))
        return
    common = ["--model", args.model, "--batch-size", str(args.batch_size), "--batches", str(args.batches),
              "--max-new-tokens", str(args.max_new_tokens)]
    rows = [run_child("update_modes.py", "--child", mode, *common) for mode in ("group", "round")]
    group, per_round = rows
    emit({"benchmark": "update_modes",
          "command": " ".join(["python", "benchmarks/update_modes.py", *sys.argv[1:]]),
          "settings": vars(args), "rows": rows,
          "step_time_ratio_group_over_round": group["seconds_per_step"] / per_round["seconds_per_step"],
          "gspo_time_ratio_group_over_round": group["gspo_seconds_per_step"] / per_round["gspo_seconds_per_step"]
          if per_round["gspo_seconds_per_step"] else None,
          "machine": machine()})


if __name__ == "__main__":
    main()
