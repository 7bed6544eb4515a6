"""Sampling G candidates per prompt with the prompt's KV cache shared, against encoding the prompt G times.

    python benchmarks/prompt_cache.py [--quick] [--model smollm2-135m-instruct] [--group-size 8]

The same ``HFPolicy.generate`` call (B prompts, G samples each) runs with ``share_prompt_cache`` on and off,
alternating, with the same seed, so both produce the same samples; the ratio of their times is the saving.
The last output line is JSON.
"""

from __future__ import annotations

import sys
import time

import torch
from _common import benchmark_parser, emit, machine

from tracer_pl.core.roles import DialogueView, Proposer
from tracer_pl.data.sources import load_problems
from tracer_pl.engines.hf.policy import HFPolicy

SOURCE = "reasoning_gym:basic_arithmetic?size=16&max_terms=2&max_digits=2"


def main() -> None:
    parser = benchmark_parser(__doc__, "2 repeats of 16 new tokens")
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.max_new_tokens = 2, 16
    backbone = HFPolicy.from_pretrained(args.model, max_new_tokens=args.max_new_tokens, temperature=1.0)
    proposer = Proposer()
    prompts = [proposer.messages(DialogueView(problem=p)) for p in load_problems(SOURCE)][: args.prompts]
    backbone.generate("proposer", prompts[:1], 2)  # warm-up
    times = {True: [], False: []}
    same = True
    for repeat in range(args.repeats):
        outputs = {}
        for share in (True, False) if repeat % 2 == 0 else (False, True):
            backbone.share_prompt_cache = share
            torch.manual_seed(repeat)
            start = time.perf_counter()
            outputs[share] = backbone.generate("proposer", prompts, args.group_size)
            times[share].append(time.perf_counter() - start)
        same &= [[c.completion_ids.tolist() for c in g] for g in outputs[True]] == \
                [[c.completion_ids.tolist() for c in g] for g in outputs[False]]
    prompt_tokens = sum(len(backbone.tokenizer(backbone.render(p))["input_ids"]) for p in prompts) / len(prompts)
    shared, plain = sum(times[True]) / args.repeats, sum(times[False]) / args.repeats
    emit({"benchmark": "prompt_cache", "command": " ".join(["python", "benchmarks/prompt_cache.py", *sys.argv[1:]]),
          "settings": vars(args), "prompt_tokens": prompt_tokens, "seconds_shared": shared,
          "seconds_unshared": plain, "speedup": plain / shared, "identical_samples": same, "machine": machine()})


if __name__ == "__main__":
    main()
