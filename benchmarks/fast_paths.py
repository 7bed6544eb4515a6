"""What do the speed settings save, and what do they change? ``generation_weights`` and ``score_autocast``.

    python benchmarks/fast_paths.py [--quick] [--repeats 4] [--steps 4] [--variants ...] [--parts ...]

Two parts, each comparing every variant with today's defaults (``adapters``, ``off``) in one run, interleaved:

1. **The same work** (SmolLM2-135M, one process, the policy's settings switched between timings): generation
   calls of the widths a quickstart step makes (2, 4 and 8 sequences, 2 prompts), every call decoding exactly
   ``--tokens`` new tokens (``min_new_tokens`` = ``max_new_tokens``, so no variant stops sooner); and GSPO's
   scoring forward and backward pass on one fixed set of 8 completions. Median seconds per call over the
   repeats and the ratio to today's, with the range of the per-repeat ratios.
2. **Whole training steps** through the CLI (``benchmarks/step_time.py`` in a fresh process per run), on
   ``configs/quickstart.yaml`` and ``configs/tiny.yaml``, runs interleaved ABBA: seconds per step after the
   first, generated tokens per step and GSPO optimizer steps per step (a variant's samples differ, if only by
   rounding, so the dialogues and the work differ; both are printed beside the time, with the speed-up per
   generated token), the largest sampling mismatch GSPO logged (``sampling_logp_mismatch``, mean absolute
   per-token log-prob gap; None for today's path, which samples from the training weights themselves) and the
   process's peak resident memory. On a CPU without bf16 instructions (torch reports ``AVX2`` or less) the
   ``score_autocast: bf16`` variants are left out of this part, since part 1 already shows them many times
   slower there; ``--variants`` overrides.

The last line is one JSON object.
"""

from __future__ import annotations

import statistics
import sys
import time

from _common import benchmark_parser, emit, machine, run_child

VARIANTS = {
    "today": {"generation_weights": "adapters", "score_autocast": "off"},
    "merged": {"generation_weights": "merged", "score_autocast": "off"},
    "merged_bf16": {"generation_weights": "merged_bf16", "score_autocast": "off"},
    "score_bf16": {"generation_weights": "adapters", "score_autocast": "bf16"},
    "all": {"generation_weights": "merged_bf16", "score_autocast": "bf16"},
}
WIDTHS = (2, 4, 8)


def _set(policy, variant: str) -> None:
    for name, value in VARIANTS[variant].items():
        setattr(policy, name, value)


def same_work(model: str, tokens: int, repeats: int) -> dict:
    """Part 1: per variant, median seconds of each generation width and of one scoring forward + backward."""
    import torch

    from tracer_pl.engines.hf.policy import HFPolicy

    policy = HFPolicy.from_pretrained(model, max_new_tokens=tokens, temperature=0.7, top_k=0, top_p=1.0,
                                      device="cpu")
    policy.model.get_base_model().generation_config.min_new_tokens = tokens  # every variant decodes as long
    prompts = [[{"role": "user", "content": f"What is {a} + {b}? Answer with a number."}] for a, b in ((3, 4), (7, 2))]
    torch.manual_seed(0)
    completions = [c for group in policy.generate("proposer", prompts, 4) for c in group]
    times: dict[str, dict[str, list[float]]] = {v: {} for v in VARIANTS}
    order = list(VARIANTS)
    for repeat in range(repeats):
        for variant in order if repeat % 2 == 0 else order[::-1]:
            _set(policy, variant)
            policy.generate("proposer", prompts[:1], 1)  # the merge (when a variant merges) is not timed
            for width in WIDTHS:
                torch.manual_seed(repeat)
                start = time.perf_counter()
                policy.generate("proposer", prompts, width // 2)
                times[variant].setdefault(f"generate_w{width}", []).append(time.perf_counter() - start)
            policy.model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            logp, mask = policy.token_logprobs("proposer", completions)
            (-(logp * mask).sum()).backward()
            times[variant].setdefault("score_forward_backward", []).append(time.perf_counter() - start)
    return _ratios(times)


def _ratios(times: dict[str, dict[str, list[float]]]) -> dict:
    """Median seconds per measure and variant, and each variant's speed-up over today's: median and range of the
    per-repeat ratios (repeat k of today against repeat k of the variant)."""
    result = {}
    for variant, measures in times.items():
        result[variant] = {}
        for measure, seconds in measures.items():
            ratios = [t / s for t, s in zip(times["today"][measure], seconds)]
            result[variant][measure] = {"median_seconds": statistics.median(seconds),
                                        "speedup": statistics.median(ratios),
                                        "speedup_range": [min(ratios), max(ratios)]}
    return result


def whole_steps(config: str, steps: int, repeats: int, variants: list[str]) -> dict:
    """Part 2: the CLI's training steps, one fresh process per run, variants interleaved ABBA."""
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for repeat in range(repeats):
        for variant in variants if repeat % 2 == 0 else variants[::-1]:
            flags = [f"--model.backbone.{name}={value}" for name, value in VARIANTS[variant].items()]
            runs[variant].append(run_child("step_time.py", config, "--batches", str(steps + 1), "--", *flags))
    result = {}
    for variant, done in runs.items():
        seconds = [r["seconds_per_batch"] for r in done]
        ratios = [t["seconds_per_batch"] / r["seconds_per_batch"] for t, r in zip(runs["today"], done)]
        per_token = [(t["seconds_per_batch"] / t["generated_tokens_per_batch"])
                     / (r["seconds_per_batch"] / r["generated_tokens_per_batch"]) for t, r in zip(runs["today"], done)]
        result[variant] = {
            "seconds_per_step": statistics.median(seconds),
            "speedup": statistics.median(ratios),
            "speedup_range": [min(ratios), max(ratios)],
            "speedup_per_generated_token": statistics.median(per_token),
            "generated_tokens_per_step": statistics.median(r["generated_tokens_per_batch"] for r in done),
            "gspo_steps_per_step": statistics.median(r["gspo_steps_per_batch"] for r in done),
            "peak_rss_gb": max(r["peak_rss_gb"] for r in done),
            "sampling_logp_mismatch": max((r["sampling_logp_mismatch"] for r in done
                                           if r.get("sampling_logp_mismatch") is not None), default=None),
        }
    return result


def native_bf16() -> bool:
    """Whether bf16 matmuls run natively here: a CUDA GPU, or a CPU with AVX-512 (BF16) or AMX."""
    import torch

    return torch.cuda.is_available() or "AVX512" in torch.backends.cpu.get_cpu_capability()


def main() -> None:
    parser = benchmark_parser(__doc__, "2 repeats, 16 tokens, 2 steps per run, quickstart whole steps today/all only")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--variants", nargs="+", choices=tuple(VARIANTS), help="whole-step variants (today is "
                        "always run); default all, without the score_autocast ones on a CPU lacking bf16")
    parser.add_argument("--parts", nargs="+", choices=("same_work", "whole_steps"),
                        default=["same_work", "whole_steps"], help="which parts to run (default both)")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.tokens, args.steps = 2, 16, 2
    step_variants = args.variants or [v for v in VARIANTS
                                      if native_bf16() or VARIANTS[v]["score_autocast"] == "off"]
    step_variants = ["today", *[v for v in step_variants if v != "today"]]
    if args.quick and not args.variants:
        step_variants = step_variants[:1] + step_variants[-1:]
    result = {
        "benchmark": "fast_paths",
        "machine": machine(),
        "settings": {"repeats": args.repeats, "tokens": args.tokens, "steps_per_run": args.steps,
                     "variants": VARIANTS},
        "native_bf16": native_bf16(),
    }
    if "whole_steps" in args.parts:
        result["whole_steps"] = {
            "quickstart": whole_steps("configs/quickstart.yaml", args.steps, max(2, args.repeats // 2),
                                      step_variants),
            "tiny": whole_steps("configs/tiny.yaml", args.steps, args.repeats, step_variants),
        }
    if "same_work" in args.parts:
        result["same_work"] = same_work(args.model, args.tokens, args.repeats)
    if "whole_steps" not in args.parts:
        emit(result)
        return
    quick = result["whole_steps"]["quickstart"][step_variants[-1]]
    result["quickstart_variant"] = step_variants[-1]
    result["quickstart_step_speedup"] = quick["speedup"]
    today = result["whole_steps"]["quickstart"]["today"]
    result["quickstart_memory_ratio"] = quick["peak_rss_gb"] / today["peak_rss_gb"]
    emit(result)


if __name__ == "__main__":
    sys.exit(main())
