"""GPU check: a 4-bit QLoRA TRACER step with vLLM rollouts on SmolLM2-135M, in minutes, offline.

    python benchmarks/gpu_check.py        # from the repository, with tracer-pl and vllm installed

Made for a machine with one CUDA GPU and no internet (the model is the offline ``smollm2-135m-instruct`` alias).
It runs :mod:`vllm_rollouts` with ``--qlora``: the training model is SmolLM2 on a 4-bit NF4 base with two LoRA
adapters (bitsandbytes) and GSPO's scoring under bf16 autocast (``score_autocast: bf16``, the 7B configs'
setting), vLLM serves the same base in bf16 with both adapters; it measures HF ``generate``
against vLLM rollout tokens per second, TRACER training steps with the vLLM engine (seconds per step, adapter
sync time and its share of a step) and peak GPU memory. Without CUDA it runs the same in fp32 on the CPU
(nothing 4-bit) and says so; without vLLM it reports what is missing. Prints one JSON line at the end.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, machine, run_child  # noqa: E402

BUDGET_SECONDS = 8 * 60


def main() -> None:
    import torch

    start = time.perf_counter()
    cuda = torch.cuda.is_available()
    result: dict = {"machine": machine(), "cuda": cuda, "skipped": []}
    if importlib.util.find_spec("vllm") is None:
        result["skipped"].append("vllm is not installed: pip install vllm (docs/engines.md)")
        result["seconds"] = time.perf_counter() - start
        emit(result)
        return
    options = ["--quick"] + (["--qlora"] if cuda else [])
    if not cuda:
        result["skipped"].append("no CUDA: fp32 on the CPU, no 4-bit base, peak memory is the process's RSS")
    timeout = BUDGET_SECONDS if cuda else 4 * BUDGET_SECONDS  # the budget is a GPU's; a CPU is far slower
    for part in ("rollout", "training"):
        try:
            result[part] = run_child("vllm_rollouts.py", "--part", part, *options, timeout=timeout)
        except (RuntimeError, subprocess.TimeoutExpired) as failure:  # report it and go on with the next part
            result[part] = {"error": str(failure)[-2000:]}
    result["seconds"] = time.perf_counter() - start
    result["within_budget"] = result["seconds"] < BUDGET_SECONDS
    emit(result)


if __name__ == "__main__":
    main()
