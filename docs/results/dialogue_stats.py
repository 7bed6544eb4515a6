"""What happened inside the evaluated dialogues of TRACER runs (from their test records).

    python docs/results/dialogue_stats.py RUN_DIR [RUN_DIR ...]

Per run: how often each action was taken, how many verdicts the reviewer wrote and how many of them were right
about the pending answer, and on how many problems a refresh changed the answer (and whether the final answer is right).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path


def stats(run: Path) -> dict[str, int]:
    """Counts over the run's newest records file without a protocol suffix."""
    files = [p for p in run.rglob("test_records_*.jsonl") if "@" not in p.name]
    if not files:
        raise SystemExit(f"{run}: no test_records_<dataset>.jsonl")
    counts: Counter[str] = Counter()
    for line in max(files, key=lambda p: p.stat().st_mtime).open():
        record = json.loads(line)
        counts["problems"] += 1
        pending_correct = None
        answers = []
        for turn in record["turns"]:
            counts[f"{turn['role']} {turn['action']}"] += 1
            if turn["role"] == "proposer" and turn["text"] is not None and turn["parsed"] is not None:
                answers.append(turn["parsed"])
                # the proposer's reward is +1 exactly when the answer is correct (recorded in test runs too)
                pending_correct = turn["reward"] > 0 if turn["reward"] is not None else turn["parsed"] == record["gold"]
            if turn["role"] == "reviewer" and turn["parsed"] is not None and pending_correct is not None:
                counts[f"verdict {turn['parsed']}"] += 1
                counts["verdict right"] += (turn["parsed"] == "RIGHT") == pending_correct
                counts["verdict on a right answer"] += pending_correct  # what always saying RIGHT would get
        if len(set(answers)) > 1:
            counts["answer changed"] += 1
            counts["answer changed, final right" if record["correct"] else "answer changed, final wrong"] += 1
    return dict(sorted(counts.items()))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    for path in sys.argv[1:]:
        print(Path(path).name, json.dumps(stats(Path(path))))
