"""What the released code's order costs: a batch played in lockstep against each problem's dialogue in turn.

    python benchmarks/order_cost.py [--quick] [--model smollm2-135m-instruct] [--batch-size 4] [--batches 3]
                                    [--repeats 3]

``dialogue.order: lockstep`` (the default) plays a batch's B problems round by round together: one generation
call per round and role for the whole batch. ``one_at_a_time`` (the released code's order) finishes each
problem's dialogue before the next one's, so the same work is done in B times more, B times narrower calls.
Both orders train ``configs/quickstart.yaml`` (with the model, batch size and token limit given here) for
``--batches`` batches, each run in its own process with one thread; the orders alternate for ``--repeats``
rounds so that a drift of the machine hits both. The first batch of each run is warm-up and left out. Reported
per run: seconds per training step, generation seconds per step, generation calls per step and their mean width
(sequences per call), generated tokens per step; then the median ratio of seconds per step (one_at_a_time over
lockstep) with its range over the repeats, and the same ratio for generation seconds per generated token. The
settings are the same (problems, rounds, group size G, token limit), but the samples differ, since the random
draws fall in another order, so the dialogues and their tokens differ too: the per-token ratio is the one to read
for the cost of narrower calls. The last output line is JSON.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import wraps

from _common import benchmark_parser, emit, fit_quickstart, machine, peak_memory_gb, run_child

ORDERS = ("lockstep", "one_at_a_time")


def child(order: str, model: str, batch_size: int, batches: int, max_new_tokens: int) -> dict:
    import lightning as L

    from tracer_pl.engines.hf.policy import HFPolicy

    calls: list[tuple[float, int]] = []  # (seconds, sequences) of every generate call
    original = HFPolicy.generate

    @wraps(original)
    def generate(self, role, prompts, num_samples=1, **kwargs):
        start = time.perf_counter()
        out = original(self, role, prompts, num_samples, **kwargs)
        calls.append((time.perf_counter() - start, sum(len(c) for c in out)))
        return out

    HFPolicy.generate = generate

    class Steps(L.Callback):
        def __init__(self) -> None:
            self.rows: list[dict[str, float]] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self._start, self._calls = time.perf_counter(), len(calls)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            mine = calls[self._calls:]
            self.rows.append({"seconds": time.perf_counter() - self._start,
                              "generate_seconds": sum(s for s, _ in mine), "calls": len(mine),
                              "sequences": sum(n for _, n in mine),
                              "completion_tokens": sum(r.completion_tokens for r in outputs["records"])})

    steps = Steps()
    fit_quickstart([f"--model.backbone.name={model}",
                    f"--model.backbone.max_new_tokens={max_new_tokens}", f"--model.dialogue.order={order}",
                    f"--data.batch_size={batch_size}", f"--trainer.limit_train_batches={batches}"],
                   steps, "tracer-order-cost-")
    rows = steps.rows[1:] or steps.rows
    n = len(rows)
    total = {k: sum(r[k] for r in rows) for k in rows[0]}
    return {"order": order, "timed_steps": n, "seconds_per_step": total["seconds"] / n,
            "generate_seconds_per_step": total["generate_seconds"] / n, "calls_per_step": total["calls"] / n,
            "sequences_per_call": total["sequences"] / total["calls"],
            "completion_tokens_per_step": total["completion_tokens"] / n, "peak_memory_gb": peak_memory_gb()}


def main() -> None:
    parser = benchmark_parser(__doc__, "2 timed batches of 2 problems, 24 new tokens, 2 repeats")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--batches", type=int, default=3, help="training batches per run (the first is warm-up)")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=ORDERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.batch_size, args.batches, args.max_new_tokens, args.repeats = 2, 3, 24, 2
    if args.child:
        emit(child(args.child, args.model, args.batch_size, args.batches, args.max_new_tokens))
        return
    common = ["--model", args.model, "--batch-size", str(args.batch_size), "--batches", str(args.batches),
              "--max-new-tokens", str(args.max_new_tokens)]
    rows = []
    for repeat in range(args.repeats):
        for order in ORDERS if repeat % 2 == 0 else reversed(ORDERS):  # ABBA: neither order always goes first
            rows.append({"repeat": repeat, **run_child("order_cost.py", "--child", order, *common)})
    per_step, per_token = [], []
    for repeat in range(args.repeats):
        pair = {r["order"]: r for r in rows if r["repeat"] == repeat}
        one, lock = pair["one_at_a_time"], pair["lockstep"]
        per_step.append(one["seconds_per_step"] / lock["seconds_per_step"])
        per_token.append((one["generate_seconds_per_step"] / one["completion_tokens_per_step"])
                         / (lock["generate_seconds_per_step"] / lock["completion_tokens_per_step"]))
    emit({"benchmark": "order_cost", "command": " ".join(["python", "benchmarks/order_cost.py", *sys.argv[1:]]),
          "settings": vars(args), "rows": rows,
          "step_time_ratio_one_at_a_time_over_lockstep": spread(per_step),
          "generation_seconds_per_token_ratio_one_at_a_time_over_lockstep": spread(per_token),
          "machine": machine()})


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "each": values}


if __name__ == "__main__":
    main()
