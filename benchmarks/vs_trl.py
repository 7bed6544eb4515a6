"""Single-agent GSPO: tracer_pl against TRL's ``GRPOTrainer`` on the same work, side by side.

    python benchmarks/vs_trl.py [--quick] [--model smollm2-135m-instruct] [--steps 6]

Both sides train a LoRA adapter (same rank, alpha and target modules) on the same base model and the same
problems in the same order, with the same G, max new tokens, sampling settings, sequence-level importance
ratios (GSPO, ``importance_sampling_level="sequence"``), no KL term, one optimizer step per group
(``steps_per_generation=1``, ``num_iterations=1``) and HF ``generate``. Each side runs in its own process; the
first step is warm-up and is not timed. Reported: seconds per 1,000 completion tokens trained, peak memory, and
the ratios (TRL / tracer_pl: above 1 means tracer_pl is faster or smaller). The last output line is JSON.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

from _common import benchmark_parser, emit, machine, peak_memory_gb, run_child

SOURCE = "reasoning_gym:basic_arithmetic?size=64&max_terms=2&max_digits=2&allow_negation=false" \
         "&allow_parentheses=false&operators=+,-"


def problems(n: int):
    from tracer_pl.data.sources import load_problems

    return list(load_problems(SOURCE, seed=3))[:n]


def run_tracer(args: argparse.Namespace) -> dict:
    import lightning as L
    import torch
    from torch.utils.data import DataLoader

    from tracer_pl.core.gspo import GSPOConfig
    from tracer_pl.training.module import BackboneConfig, EvaluationConfig, TracerModule

    class Timer(L.Callback):
        def __init__(self) -> None:
            self.times, self.tokens = [], []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.times.append(time.perf_counter() - self.start)
            mean_length = float(trainer.callback_metrics["train/proposer/completions/mean_length"])
            self.tokens.append(mean_length * len(batch) * args.group_size)

    L.seed_everything(args.seed)
    module = TracerModule(
        backbone=BackboneConfig(name=args.model, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                top_p=1.0, lora_r=8, lora_alpha=16),
        algorithm="single_agent",
        gspo=GSPOConfig(group_size=args.group_size, lr=args.lr, epsilon=0.2, max_grad_norm=1.0),
        evaluation=EvaluationConfig(method="cot"),
    )
    loader = DataLoader(problems(args.problems * (args.steps + 1)), batch_size=args.problems, collate_fn=list)
    timer = Timer()
    trainer = L.Trainer(accelerator="auto", devices=1, max_epochs=1, limit_train_batches=args.steps + 1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[timer], default_root_dir=tempfile.mkdtemp())
    trainer.fit(module, train_dataloaders=loader)
    del torch
    return summarize(timer.times, timer.tokens)


def run_trl(args: argparse.Namespace) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from tracer_pl.core.roles import DialogueView, Proposer
    from tracer_pl.engines.hf.models import load_base_model
    from tracer_pl.engines.hf.policy import infer_target_modules

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.times, self.tokens = [], []

        def on_step_begin(self, *_, **__):
            self.start = time.perf_counter()

        def on_step_end(self, *_, **__):
            self.times.append(time.perf_counter() - self.start)

        def on_log(self, _args, _state, _control, logs=None, **__):
            if logs and "completions/mean_length" in logs:
                self.tokens.append(logs["completions/mean_length"] * args.problems * args.group_size)

    model, tokenizer = load_base_model(args.model, precision="fp32")
    proposer = Proposer()
    rows = [{"prompt": proposer.messages(DialogueView(problem=p)), "gold": p.gold, "dataset": p.dataset}
            for p in problems(args.problems * (args.steps + 1))]
    batch = args.problems * args.group_size
    import torch

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
    timer = Timer()
    trainer = GRPOTrainer(model=model, reward_funcs=[proposer.as_reward_function()], args=config,
                          train_dataset=Dataset.from_list(rows), processing_class=tokenizer, peft_config=lora,
                          callbacks=[timer])
    trainer.train()
    return summarize(timer.times, timer.tokens)


def summarize(times: list[float], tokens: list[float]) -> dict:
    """Steady-state figures: the first step is warm-up."""
    steady_times, steady_tokens = times[1:], tokens[1 : len(times)]
    return {
        "steps_timed": len(steady_times),
        "seconds_per_step": sum(steady_times) / len(steady_times),
        "completion_tokens_per_step": sum(steady_tokens) / len(steady_tokens),
        "seconds_per_1k_completion_tokens": 1000 * sum(steady_times) / sum(steady_tokens),
        "peak_memory_gb": peak_memory_gb(),
    }


def main() -> None:
    parser = benchmark_parser(__doc__, "3 timed steps of 32 new tokens (under 2 minutes)")
    parser.add_argument("--side", choices=["tracer", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--problems", type=int, default=2, help="problems per step")
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--steps", type=int, default=6, help="timed steps (after one warm-up step)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.quick:
        args.steps, args.max_new_tokens, args.group_size = 3, 32, 4
    if args.side:
        emit((run_tracer if args.side == "tracer" else run_trl)(args))
        return
    forwarded = [a for a in sys.argv[1:] if a != "--quick"]
    forwarded += ["--steps", str(args.steps), "--max-new-tokens", str(args.max_new_tokens),
                  "--group-size", str(args.group_size)]
    tracer = run_child("vs_trl.py", "--side", "tracer", *forwarded)
    trl = run_child("vs_trl.py", "--side", "trl", *forwarded)
    emit({
        "benchmark": "vs_trl", "command": " ".join(["python", "benchmarks/vs_trl.py", *sys.argv[1:]]),
        "settings": {k: v for k, v in vars(args).items() if k not in ("side", "quick")}, "quick": args.quick,
        "tracer_pl": tracer, "trl": trl,
        "speedup_trl_over_tracer": trl["seconds_per_1k_completion_tokens"] / tracer["seconds_per_1k_completion_tokens"],
        "memory_ratio_trl_over_tracer": trl["peak_memory_gb"] / tracer["peak_memory_gb"],
        "machine": machine(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    })


if __name__ == "__main__":
    main()
