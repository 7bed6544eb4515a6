"""Rollout throughput of TRACER's lockstep dialogues at several batch sizes.

    python benchmarks/batch_scaling.py [--quick] [--model smollm2-135m-instruct] [--batches 1 4 16]

Plays the whole dialogue (sampled decoding, controllers sampling their strategies, no updates) for ``batch``
problems at a time and reports completion tokens generated per second, calls per second and the speed-up over
batch 1. One process, one model; a warm-up dialogue runs first. The last output line is JSON.
"""

from __future__ import annotations

import sys
import time

import torch
from _common import benchmark_parser, emit, machine, peak_memory_gb

from tracer_pl.core.controllers import ControllerConfig
from tracer_pl.core.dialogue import DialogueConfig, run_dialogues
from tracer_pl.core.roles import Proposer, Reviewer
from tracer_pl.data.sources import load_problems
from tracer_pl.engines.hf.policy import HFPolicy

SOURCE = "reasoning_gym:basic_arithmetic?size=64&max_terms=2&max_digits=2&allow_negation=false" \
         "&allow_parentheses=false&operators=+,-"


def rollout(backbone, problems, rounds: int, seed: int) -> tuple[float, int, int]:
    proposer_controller, reviewer_controller = ControllerConfig(seed=seed).build()
    start = time.perf_counter()
    result = run_dialogues(problems, backbone, proposer=Proposer(), reviewer=Reviewer(),
                           proposer_controller=proposer_controller, reviewer_controller=reviewer_controller,
                           config=DialogueConfig(rounds=rounds, eval_greedy=False), training=False,
                           eval_generator=torch.Generator().manual_seed(seed))
    seconds = time.perf_counter() - start
    return seconds, sum(r.completion_tokens for r in result.records), sum(r.calls for r in result.records)


def main() -> None:
    parser = benchmark_parser(__doc__, "batches 1 and 4, 3 rounds, 32 new tokens")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--problems", type=int, default=16, help="problems played at every batch size")
    args = parser.parse_args()
    if args.quick:
        args.batches, args.rounds, args.max_new_tokens, args.problems = [1, 4], 3, 32, 4
    backbone = HFPolicy.from_pretrained(args.model, max_new_tokens=args.max_new_tokens, temperature=0.7)
    problems = list(load_problems(SOURCE, seed=5))[: args.problems]
    torch.manual_seed(0)
    rollout(backbone, problems[:1], rounds=1, seed=0)  # warm-up
    rows = []
    for batch in args.batches:
        seconds = tokens = calls = 0
        for start in range(0, len(problems), batch):
            s, t, c = rollout(backbone, problems[start : start + batch], args.rounds, seed=start)
            seconds, tokens, calls = seconds + s, tokens + t, calls + c
        rows.append({"batch": batch, "seconds": seconds, "completion_tokens": tokens,
                     "tokens_per_second": tokens / seconds, "calls_per_second": calls / seconds})
    for row in rows:
        row["speedup_over_batch1"] = row["tokens_per_second"] / rows[0]["tokens_per_second"]
    emit({"benchmark": "batch_scaling", "command": " ".join(["python", "benchmarks/batch_scaling.py", *sys.argv[1:]]),
          "settings": vars(args), "rows": rows, "peak_memory_gb": peak_memory_gb(), "machine": machine()})


if __name__ == "__main__":
    main()
