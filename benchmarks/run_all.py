"""Run every benchmark in full (or ``--quick``) and write their JSON results to ``benchmarks/results.json``.

    python benchmarks/run_all.py [--quick] [--out benchmarks/results.json] [--only vs_trl batch_scaling ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _common import machine, run_child

BENCHMARKS = ("profile_step", "vs_trl", "vs_full_copies", "batch_scaling", "prompt_cache", "inference_cost",
              "update_modes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(Path(__file__).with_name("results.json")))
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS))
    args = parser.parse_args()
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    results["machine"] = machine()
    for name in args.only:
        start = time.perf_counter()
        result = run_child(f"{name}.py", *(["--quick"] if args.quick else []))
        result["wall_seconds"] = time.perf_counter() - start
        results.setdefault("benchmarks", {})[name] = result
        out.write_text(json.dumps(results, indent=2) + "\n")  # keep what finished if a later one fails
        print(f"{name}: {result['wall_seconds']:.0f} s")
    print(f"results: {out}")


if __name__ == "__main__":
    main()
