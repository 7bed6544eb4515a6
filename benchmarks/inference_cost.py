"""Tokens and calls per problem of TRACER's dialogue against CoT, majority vote and debate, on the same problems.

    python benchmarks/inference_cost.py [--quick] [--model smollm2-135m-instruct] [--problems 32]
    python benchmarks/inference_cost.py --ckpt runs/quickstart/checkpoints/last.ckpt   # trained adapters

All methods run through the same backbone and harness (``TracerModule.evaluator``) with the same decoding
settings. Majority vote gets the number of samples that fits TRACER's measured token budget. Reported per
method: tokens (prompt + completion, every call) and calls per problem, wall time per problem, accuracy. The
last output line is JSON.
"""

from __future__ import annotations

import sys
import time

import torch
from _common import benchmark_parser, emit, machine

from tracer_pl.baselines import budget_matched_samples
from tracer_pl.data.sources import load_problems
from tracer_pl.training.metrics import mean_metrics
from tracer_pl.training.module import BackboneConfig, EvaluationConfig, TracerModule

SOURCE = "reasoning_gym:basic_arithmetic?size=64&max_terms=2&max_digits=1&allow_negation=false" \
         "&allow_parentheses=false&operators=+,-"


def measure(module: TracerModule, problems, batch: int) -> dict:
    module.evaluator.generators = {"sample": torch.Generator().manual_seed(0), "argmax": torch.Generator()}
    start, records = time.perf_counter(), []
    for i in range(0, len(problems), batch):
        (_, played), *_ = module.evaluator.play(problems[i : i + batch], module.policy, module.seats,
                                                module.dialogue_config, protocols=["sample"])
        records += played
    seconds = time.perf_counter() - start
    metrics = mean_metrics(records)
    return {"tokens_per_problem": metrics["tokens_per_problem"], "calls_per_problem": metrics["calls_per_problem"],
            "seconds_per_problem": seconds / len(problems), "accuracy": metrics["accuracy"]}


def main() -> None:
    parser = benchmark_parser(__doc__, "8 problems, 32 new tokens")
    parser.add_argument("--ckpt", default=None, help="a tracer-pl checkpoint whose adapters to use")
    parser.add_argument("--problems", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=40)
    args = parser.parse_args()
    if args.quick:
        args.problems, args.max_new_tokens = 8, 32
    module = TracerModule(backbone=BackboneConfig(name=args.model, max_new_tokens=args.max_new_tokens,
                                                  temperature=0.7))
    module.configure_model()
    if args.ckpt:
        state = torch.load(args.ckpt, map_location="cpu", weights_only=False)
        module.load_state_dict(state["state_dict"], strict=False)
        module.on_load_checkpoint(state)
    problems = list(load_problems(SOURCE, seed=42, split="test"))[: args.problems]
    results = {}
    for method in ("tracer", "cot"):
        module.evaluation = EvaluationConfig(method=method, protocols=["sample"])
        results[method] = measure(module, problems, args.batch)
    k = budget_matched_samples(results["tracer"]["tokens_per_problem"], results["cot"]["tokens_per_problem"])
    module.evaluation = EvaluationConfig(method="majority_vote", samples=k)
    results[f"majority_vote_k{k}"] = measure(module, problems, args.batch)
    module.evaluation = EvaluationConfig(method="debate", debate_agents=3, debate_rounds=2)
    results["debate_3x2"] = measure(module, problems, args.batch)
    emit({"benchmark": "inference_cost",
          "command": " ".join(["python", "benchmarks/inference_cost.py", *sys.argv[1:]]), "settings": vars(args),
          "methods": results,
          "tracer_tokens_over_cot": results["tracer"]["tokens_per_problem"] / results["cot"]["tokens_per_problem"],
          "machine": machine()})


if __name__ == "__main__":
    main()
