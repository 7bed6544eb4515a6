"""One base + one adapter per role (tracer_pl) against one full model copy per role (the authors' layout).

    python benchmarks/vs_full_copies.py [--quick] [--model smollm2-135m-instruct] [--roles 2 3 4]

For each number of roles, two fresh processes load the same model: one ``HFPolicy`` with an adapter per role,
and one full copy of the model per role, each with its own LoRA adapter of the same shape. Reported: the bytes of
all parameters and buffers held, the process's peak memory, the load time, and the ratios copies / shared. The
last output line is JSON.
"""

from __future__ import annotations

import argparse
import sys
import time

from _common import benchmark_parser, emit, machine, peak_memory_gb, run_child


def held_bytes(modules) -> int:
    """Bytes of every distinct parameter and buffer tensor (shared storage counted once)."""
    seen, total = set(), 0
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            key = tensor.untyped_storage().data_ptr()
            if key not in seen:
                seen.add(key)
                total += tensor.untyped_storage().nbytes()
    return total


def load(layout: str, model: str, roles: int) -> dict:
    start = time.perf_counter()
    names = [f"role{i}" for i in range(roles)]
    if layout == "shared":
        from tracer_pl.engines.hf.policy import HFPolicy

        modules = [HFPolicy.from_pretrained(model, roles=names).model]
    else:
        from peft import LoraConfig, get_peft_model

        from tracer_pl.engines.hf.models import load_base_model
        from tracer_pl.engines.hf.policy import infer_target_modules

        modules = []
        for name in names:
            base, _ = load_base_model(model, precision="fp32")
            config = LoraConfig(r=8, lora_alpha=16, task_type="CAUSAL_LM", target_modules=infer_target_modules(base))
            modules.append(get_peft_model(base, config, adapter_name=name))
    seconds = time.perf_counter() - start
    return {"layout": layout, "roles": roles, "load_seconds": seconds, "held_gb": held_bytes(modules) / 2**30,
            "peak_memory_gb": peak_memory_gb()}


def main() -> None:
    parser = benchmark_parser(__doc__, "two roles only")
    parser.add_argument("--roles", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--child", nargs=2, metavar=("LAYOUT", "ROLES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        emit(load(args.child[0], args.model, int(args.child[1])))
        return
    rows = []
    for roles in [2] if args.quick else args.roles:
        shared = run_child("vs_full_copies.py", "--model", args.model, "--child", "shared", str(roles))
        copies = run_child("vs_full_copies.py", "--model", args.model, "--child", "copies", str(roles))
        rows.append({
            "roles": roles, "shared": shared, "copies": copies,
            "held_memory_ratio": copies["held_gb"] / shared["held_gb"],
            "peak_memory_ratio": copies["peak_memory_gb"] / shared["peak_memory_gb"],
            "load_time_ratio": copies["load_seconds"] / shared["load_seconds"],
        })
    emit({"benchmark": "vs_full_copies", "command": " ".join(["python", "benchmarks/vs_full_copies.py", *sys.argv[1:]]),
          "model": args.model, "quick": args.quick, "rows": rows, "machine": machine()})


if __name__ == "__main__":
    main()
