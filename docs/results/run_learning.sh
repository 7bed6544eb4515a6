#!/usr/bin/env bash
# Does TRACER learn on the quickstart model? Held-out accuracy before and after training, against single-agent
# GSPO trained with the same number of generated tokens, the inference baselines, and four ablations.
#
#   bash docs/results/run_learning.sh [OUT] [STEPS]     # OUT defaults to runs/learning, STEPS to 40
#   tracer-pl report OUT/* --out docs/results/learning
#
# A run whose directory holds a `.done` file is skipped, so the script continues where it stopped.
set -euo pipefail
OUT=${1:-runs/learning}
STEPS=${2:-40}
OPTIONS='min_terms=3&max_terms=3&max_digits=1&allow_negation=false&allow_parentheses=false&operators=+,-'
TRAIN="reasoning_gym:basic_arithmetic?size=2000&$OPTIONS"
TEST="reasoning_gym:basic_arithmetic?size=200&$OPTIONS"
BASE=(-c configs/quickstart.yaml --data.train "$TRAIN" --data.test "$TEST" --data.eval_batch_size 16
      --model.backbone.max_new_tokens 48 --model.gspo.lr 1.0e-4 --trainer.limit_train_batches "$STEPS")
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
mkdir -p "$OUT"

stamp() { echo "$(date -u +%FT%TZ) $*" | tee -a "$OUT/timings.txt"; }
done_() { [[ -f "$OUT/$1/.done" ]]; }
mark() { touch "$OUT/$1/.done"; stamp "done $1"; }
metrics() { ls -t "$OUT/$1"/logs/version_*/test_metrics.json | head -1; }

evaluate() {  # name, extra args... (the untrained adapters: the base model)
  local name=$1; shift
  done_ "$name" && return 0
  stamp "test $name"
  tracer-pl test "${BASE[@]}" --trainer.default_root_dir "$OUT/$name" "$@"
  mark "$name"
}

train() {  # name, extra args...
  local name=$1; shift
  done_ "$name" && return 0
  stamp "fit $name"
  tracer-pl fit "${BASE[@]}" --trainer.default_root_dir "$OUT/$name" "$@"
  stamp "test $name"
  tracer-pl test "${BASE[@]}" --trainer.default_root_dir "$OUT/$name" "$@" \
    --ckpt_path "$OUT/$name/checkpoints/last.ckpt"
  mark "$name"
}

evaluate before_tracer
evaluate before_cot -c configs/baselines/cot.yaml
train tracer

# single-agent GSPO gets as many generated (completion) tokens as TRACER's training used
sa_steps=$(python - "$OUT" "$STEPS" <<'PY'
import csv, glob, json, sys
out, steps = sys.argv[1], int(sys.argv[2])
rows = [r for f in glob.glob(f"{out}/tracer/logs/version_*/metrics.csv") for r in csv.DictReader(open(f))
        if r.get("train/completion_tokens_per_problem")]
tracer_tokens = sum(float(r["train/completion_tokens_per_problem"]) * 2 for r in rows)  # batch_size 2
records = sorted(glob.glob(f"{out}/before_cot/logs/version_*/test_records_*.jsonl"))[-1]
lengths = [json.loads(line)["completion_tokens"] for line in open(records)]
per_step = 2 * 4 * sum(lengths) / len(lengths)  # batch 2, G = 4 samples of CoT length
print(max(1, round(tracer_tokens / per_step)))
PY
)
stamp "single-agent GSPO steps for TRACER's generated tokens: $sa_steps"
train single_agent_gspo -c configs/baselines/single_agent_gspo.yaml --trainer.limit_train_batches "$sa_steps"

k=$(python - "$(metrics tracer)" "$(metrics before_cot)" <<'PY'
import json, sys
from tracer_pl.baselines import budget_matched_samples
tracer, cot = (json.load(open(p)) for p in sys.argv[1:])
pick = lambda m: next(v for k, v in m.items() if k.endswith("/tokens_per_problem") and "@" not in k)
print(budget_matched_samples(pick(tracer), pick(cot)))
PY
)
evaluate "majority_vote_k$k" -c configs/baselines/majority_vote.yaml --model.evaluation.samples "$k"
evaluate debate -c configs/baselines/debate.yaml

for ablation in no_reviewer no_proposer_controller no_counterfactual no_vote_state; do
  train "ablation_$ablation" -c "configs/ablations/$ablation.yaml" --model.evaluation.protocols '[sample]'
done
stamp "all done"
