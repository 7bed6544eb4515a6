"""Single-agent GSPO: tracer_pl against TRL's ``GRPOTrainer`` doing the same work, side by side and interleaved.

    python benchmarks/vs_trl.py [--quick] [--model smollm2-135m-instruct] [--steps 6] [--repeats 3]

Same work, counted: both sides train a LoRA adapter (same rank, alpha and target modules) on the same base model,
on the same problems in the same order, P problems x G samples per step, with identical sampling (temperature,
``top_k = 0`` and ``top_p = 1``: no filter on either side, whatever the model's ``generation_config`` says;
repetition penalty 1), the same max new tokens, sequence-level importance ratios (GSPO), no KL term, the same
clip range, learning rate and gradient clip, and one optimizer step per training step (tracer_pl's
``gspo.update_per: round``; TRL's ``steps_per_generation = num_iterations = 1``). Per side and row the JSON
reports what was done: ``optimizer_steps``, ``trained_sequences`` (sequences in the loss),
``frac_reward_zero_std`` (groups whose rewards were all equal), ``mean_reward`` (+1 right, -1 wrong),
``completion_tokens`` and ``longest_completion_per_step`` (decoding runs to the longest sequence of a
call), then ``generate_seconds`` and ``update_seconds``
per step (generation with reward scoring; everything else of the step).

Two rows. ``signal``: one-digit additions and subtractions, on which the base model is right about half the time,
so nearly every group has reward signal and both sides train the same sequences. ``zero_signal``: two-digit sums the
base model gets wrong, so groups are all -1: tracer_pl skips the forward and backward pass of a group without
signal (no optimizer step), TRL runs them with zero advantages; the row says how many steps and sequences each
side then did, and its ratio measures that skip, not a faster trainer.

Each side runs in its own process with one thread; sides alternate for ``--repeats`` rounds (ABBA), and the
ratios are medians over repeats with their range. The first step of every run is warm-up and not timed.
``speedup`` is TRL's seconds per step over tracer_pl's on the ``signal`` row; ``memory_ratio`` TRL's peak memory
over tracer_pl's. The last output line is JSON.

``--generation-weights merged_bf16 --score-autocast bf16`` runs tracer_pl with its speed settings; TRL keeps its
fp32 defaults (``bf16=False``), so that row compares the two libraries as each is best used on this CPU, with the
same counts of steps, sequences and tokens, but tracer_pl sampling from a bf16 rounding of the policy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from functools import wraps

from _common import benchmark_parser, emit, machine, peak_memory_gb, run_child, timed

ROWS = {
    "signal": "reasoning_gym:basic_arithmetic?size=200&max_terms=2&max_digits=1&allow_negation=false"
              "&allow_parentheses=false&operators=+,-",
    "zero_signal": "reasoning_gym:basic_arithmetic?size=200&max_terms=2&max_digits=2&allow_negation=false"
                   "&allow_parentheses=false&operators=+,-",
}
SIDES = ("tracer_pl", "trl")


def problems(row: str, n: int):
    from tracer_pl.data.sources import load_problems

    return list(load_problems(ROWS[row], seed=3))[:n]


def run_tracer(args: argparse.Namespace) -> dict:
    import lightning as L
    from torch.utils.data import DataLoader

    from tracer_pl.core.gspo import GSPOConfig
    from tracer_pl.engines.hf.policy import HFPolicy
    from tracer_pl.training.gspo_update import GSPOUpdate
    from tracer_pl.training.module import BackboneConfig, EvaluationConfig, TracerModule

    totals = {"generate": 0.0, "groups": 0.0, "zero_std_groups": 0.0, "trained_sequences": 0.0, "reward_sum": 0.0,
              "longest": 0.0}
    timed(HFPolicy, "generate", totals, "generate")
    step = GSPOUpdate.step

    @wraps(step)
    def counted_step(self, role, groups):
        live = [g for g in groups if g.has_signal]
        totals["groups"] += len(groups)
        totals["zero_std_groups"] += len(groups) - len(live)
        totals["trained_sequences"] += sum(len(g.completions) for g in live)
        totals["reward_sum"] += sum(float(g.rewards.mean()) for g in groups)
        totals["longest"] = max([totals["longest"]] + [c.completion_tokens for g in groups for c in g.completions])
        return step(self, role, groups)

    GSPOUpdate.step = counted_step

    class Steps(L.Callback):
        def __init__(self) -> None:
            self.rows: list[dict[str, float]] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            totals["longest"] = 0.0
            self.start, self.before = time.perf_counter(), dict(totals)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            seconds = time.perf_counter() - self.start
            done = {key: totals[key] - self.before[key] for key in totals}
            self.rows.append({
                "seconds": seconds, "generate_seconds": done["generate"],
                "optimizer_steps": pl_module.last_step_statistics.get("gspo/proposer/steps", 0.0),
                "trained_sequences": done["trained_sequences"], "zero_std_groups": done["zero_std_groups"],
                "groups": done["groups"], "reward_sum": done["reward_sum"], "longest_completion": totals["longest"],
                "completion_tokens": float(sum(r.completion_tokens for r in outputs["records"])),
            })

    L.seed_everything(args.seed)
    module = TracerModule(
        backbone=BackboneConfig(name=args.model, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                top_p=1.0, top_k=0, repetition_penalty=1.0, lora_r=8, lora_alpha=16,
                                generation_weights=args.generation_weights, score_autocast=args.score_autocast),
        algorithm="single_agent",
        gspo=GSPOConfig(group_size=args.group_size, lr=args.lr, epsilon=0.2, max_grad_norm=1.0, update_per="round"),
        evaluation=EvaluationConfig(method="cot"),
    )
    loader = DataLoader(problems(args.row, args.problems * (args.steps + 1)), batch_size=args.problems,
                        collate_fn=list)
    steps = Steps()
    trainer = L.Trainer(accelerator="auto", devices=1, max_epochs=1, limit_train_batches=args.steps + 1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[steps], default_root_dir=tempfile.mkdtemp())
    trainer.fit(module, train_dataloaders=loader)
    return summarize(steps.rows)


def run_trl(args: argparse.Namespace) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from tracer_pl.core.roles import DialogueView, Proposer
    from tracer_pl.engines.hf.models import load_base_model
    from tracer_pl.engines.hf.policy import infer_target_modules

    totals = {"generate": 0.0}
    timed(GRPOTrainer, "_generate_and_score_completions", totals, "generate")
    batch = args.problems * args.group_size

    class Steps(TrainerCallback):
        def __init__(self) -> None:
            self.rows: list[dict[str, float]] = []
            self.logged: list[dict[str, float]] = []

        def on_step_begin(self, *_, **__):
            self.start, self.generate = time.perf_counter(), totals["generate"]

        def on_step_end(self, *_, **__):
            self.rows.append({"seconds": time.perf_counter() - self.start,
                              "generate_seconds": totals["generate"] - self.generate, "optimizer_steps": 1.0,
                              "trained_sequences": float(batch), "groups": float(args.problems)})

        def on_log(self, _args, _state, _control, logs=None, **__):
            if logs and "frac_reward_zero_std" in logs:
                self.logged.append(logs)

    model, tokenizer = load_base_model(args.model, precision="fp32")
    proposer = Proposer()
    rows = [{"prompt": proposer.messages(DialogueView(problem=p)), "gold": p.gold, "dataset": p.dataset}
            for p in problems(args.row, args.problems * (args.steps + 1))]
    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=batch, gradient_checkpointing=False,
        num_generations=args.group_size, steps_per_generation=1, num_iterations=1,
        max_completion_length=args.max_new_tokens, temperature=args.temperature, top_p=1.0, top_k=0,
        repetition_penalty=1.0, beta=0.0, importance_sampling_level="sequence", epsilon=0.2,
        learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0,
        max_steps=args.steps + 1, logging_steps=1, report_to=[], save_strategy="no", shuffle_dataset=False,
        seed=args.seed, bf16=False, use_cpu=not torch.cuda.is_available(), disable_dropout=True,
        log_completions=False,
    )
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=infer_target_modules(model))
    steps = Steps()
    trainer = GRPOTrainer(model=model, reward_funcs=[proposer.as_reward_function()], args=config,
                          train_dataset=Dataset.from_list(rows), processing_class=tokenizer, peft_config=lora,
                          callbacks=[steps])
    trainer.train()
    for row, logs in zip(steps.rows, steps.logged):
        row["zero_std_groups"] = logs["frac_reward_zero_std"] * args.problems
        row["reward_sum"] = logs["reward"] * args.problems
        row["longest_completion"] = logs["completions/max_length"]
        row["completion_tokens"] = logs["completions/mean_length"] * batch
    return summarize(steps.rows)


def summarize(rows: list[dict[str, float]]) -> dict:
    """Per-step means over the timed steps (the first step is warm-up), and what was done in them."""
    timed_rows = rows[1:] or rows
    n = len(timed_rows)

    def total(key: str) -> float:
        return sum(r.get(key, 0.0) for r in timed_rows)

    seconds, generate = total("seconds"), total("generate_seconds")
    return {
        "steps_timed": n, "seconds_per_step": seconds / n, "generate_seconds": generate / n,
        "update_seconds": (seconds - generate) / n, "optimizer_steps": total("optimizer_steps"),
        "trained_sequences": total("trained_sequences"),
        "frac_reward_zero_std": total("zero_std_groups") / total("groups") if total("groups") else None,
        "mean_reward": total("reward_sum") / total("groups") if total("groups") else None,
        "completion_tokens": total("completion_tokens"),
        "longest_completion_per_step": total("longest_completion") / n, "peak_memory_gb": peak_memory_gb(),
    }


def ratio_summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "each": values}


def main() -> None:
    parser = benchmark_parser(__doc__, "2 timed steps of 32 new tokens, 2 repeats")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--row", choices=tuple(ROWS), default="signal", help=argparse.SUPPRESS)
    parser.add_argument("--rows", nargs="+", choices=tuple(ROWS), default=list(ROWS),
                        help="rows to run (default both; `speedup` needs `signal`)")
    parser.add_argument("--problems", type=int, default=2, help="problems per step")
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--steps", type=int, default=6, help="timed steps (after one warm-up step)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs of each side per row")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--generation-weights", default="adapters", choices=("adapters", "merged", "merged_bf16"),
                        help="tracer_pl's --model.backbone.generation_weights (TRL generates in fp32 with its "
                             "adapter unmerged)")
    parser.add_argument("--score-autocast", default="off", choices=("off", "bf16"),
                        help="tracer_pl's --model.backbone.score_autocast (TRL trains in fp32: bf16=False)")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.max_new_tokens, args.group_size, args.repeats = 2, 32, 4, 2
    if args.side:
        emit((run_tracer if args.side == "tracer_pl" else run_trl)(args))
        return
    common = ["--model", args.model, "--problems", str(args.problems), "--group-size", str(args.group_size),
              "--max-new-tokens", str(args.max_new_tokens), "--steps", str(args.steps),
              "--temperature", str(args.temperature), "--lr", str(args.lr), "--seed", str(args.seed),
              "--generation-weights", args.generation_weights, "--score-autocast", args.score_autocast]
    result: dict = {"benchmark": "vs_trl", "command": " ".join(["python", "benchmarks/vs_trl.py", *sys.argv[1:]]),
                    "settings": {k: v for k, v in vars(args).items() if k not in ("side", "row")},
                    "rows": {}}
    if "signal" not in args.rows:
        parser.error("--rows must include signal: the headline speedup is measured on it")
    for row in args.rows:
        runs: dict[str, list[dict]] = {side: [] for side in SIDES}
        for repeat in range(args.repeats):
            for side in SIDES if repeat % 2 == 0 else reversed(SIDES):  # ABBA
                runs[side].append(run_child("vs_trl.py", "--side", side, "--row", row, *common))
        pairs = list(zip(runs["tracer_pl"], runs["trl"]))
        result["rows"][row] = {
            "runs": runs,
            "step_time_ratio_trl_over_tracer": ratio_summary([b["seconds_per_step"] / a["seconds_per_step"]
                                                              for a, b in pairs]),
            "generate_ratio_trl_over_tracer": ratio_summary([b["generate_seconds"] / a["generate_seconds"]
                                                             for a, b in pairs]),
            "update_ratio_trl_over_tracer": ratio_summary([b["update_seconds"] / a["update_seconds"]
                                                           for a, b in pairs if a["update_seconds"] > 0]
                                                          or [float("nan")]),
            "memory_ratio_trl_over_tracer": ratio_summary([b["peak_memory_gb"] / a["peak_memory_gb"]
                                                           for a, b in pairs]),
        }
        for side in SIDES:  # the counts of the first run of each side, for the headline
            first = runs[side][0]
            result["rows"][row][side] = {key: first[key] for key in (
                "optimizer_steps", "trained_sequences", "frac_reward_zero_std", "mean_reward", "generate_seconds",
                "update_seconds", "completion_tokens", "longest_completion_per_step")}
    signal = result["rows"]["signal"]
    result.update({
        "tracer_pl": signal["tracer_pl"], "trl": signal["trl"],
        "speedup": signal["step_time_ratio_trl_over_tracer"]["median"],
        "memory_ratio": signal["memory_ratio_trl_over_tracer"]["median"],
        "machine": machine(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    })
    emit(result)


if __name__ == "__main__":
    main()
