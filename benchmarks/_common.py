"""Shared helpers of the benchmarks: machine facts, peak memory, child processes that report JSON."""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PACKAGES = ("torch", "transformers", "peft", "lightning", "trl", "bitsandbytes", "tracer-pl")
MODEL = "smollm2-135m-instruct"


def benchmark_parser(doc: str, quick: str, model: bool = True) -> argparse.ArgumentParser:
    """The options every benchmark shares: the first paragraph of ``doc`` as description, ``--quick`` (help
    ``quick``) and, for benchmarks of one model, ``--model``."""
    made = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    made.add_argument("--quick", action="store_true", help=quick)
    if model:
        made.add_argument("--model", default=MODEL)
    return made


def machine() -> dict[str, Any]:
    """CPU/GPU, core count and the versions of the packages that matter."""
    import torch

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "gpu": gpu,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(), "versions": versions}


def peak_memory_gb() -> float:
    """Peak GPU memory allocated on CUDA, else the process's peak resident memory."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return peak_rss_gb()


def peak_rss_gb() -> float:
    """This process's own peak resident memory, in GiB.

    On Linux it is ``VmHWM`` of ``/proc/self/status``: ``getrusage``'s ``ru_maxrss`` is carried over ``execve``, so
    a child started by a parent that had loaded a model would report the parent's peak. Elsewhere ``ru_maxrss``.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20  # kB
    except OSError:
        pass
    scale = 2**30 if sys.platform == "darwin" else 2**20  # bytes on macOS, kB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def timed(owner: object, name: str, totals: dict[str, float], key: str) -> None:
    """Wrap ``owner.name`` so that its wall time adds to ``totals[key]``."""
    import time
    from functools import wraps

    original = getattr(owner, name)

    @wraps(original)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            totals[key] += time.perf_counter() - start

    setattr(owner, name, wrapper)


def fit_quickstart(flags: list[str], callback: Any, prefix: str) -> None:
    """Train ``configs/quickstart.yaml`` with ``flags`` (``--name=value``) and ``callback``, without logger,
    checkpoints or progress bar, in a temporary root directory named with ``prefix``."""
    import tempfile

    from tracer_pl.cli import build_cli

    root = tempfile.mkdtemp(prefix=prefix)
    cli = build_cli(["-c", "configs/quickstart.yaml", *flags, f"--trainer.default_root_dir={root}",
                     "--trainer.logger=false", "--trainer.callbacks=[]", "--trainer.enable_progress_bar=false"],
                    run=False)
    cli.trainer.callbacks.append(callback)
    cli.trainer.fit(cli.model, cli.datamodule)


def run_child(script: str, *args: str, timeout: float = 7200) -> dict[str, Any]:
    """Run ``python benchmarks/<script> *args`` in a fresh process; return the JSON on its last output line.

    The child uses one thread (``OMP_NUM_THREADS=1``) unless the caller set another number.
    """
    command = [sys.executable, str(HERE / script), *args]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def emit(result: dict[str, Any]) -> None:
    """Print the result as one JSON object on the last line."""
    print(json.dumps(result))
