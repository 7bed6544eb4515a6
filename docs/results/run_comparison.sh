#!/usr/bin/env bash
# TRACER against every baseline and ablation on the quickstart model (SmolLM2-135M-Instruct), on this CPU.
#
#   bash docs/results/run_comparison.sh [OUT]        # OUT defaults to runs/compare
#   tracer-pl report OUT/* --out docs/results/quickstart_comparison
#
# Every trained method runs the quickstart training (6 batches of 2 generated problems), then all methods are
# tested on the same 64 held-out generated problems. The inference baselines use the untrained adapters, i.e.
# the base model. Majority vote gets k samples with k chosen from TRACER's measured tokens per problem.
set -euo pipefail
OUT=${1:-runs/compare}
TEST='reasoning_gym:basic_arithmetic?size=64&max_terms=2&max_digits=1&allow_negation=false&allow_parentheses=false&operators=+,-'
BASE=(-c configs/quickstart.yaml --data.test "$TEST" --data.eval_batch_size 16)
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
mkdir -p "$OUT"

stamp() { echo "$(date -u +%FT%TZ) $*" | tee -a "$OUT/timings.txt"; }

latest_metrics() {  # the newest test_metrics.json under a run directory
  ls -t "$1"/logs/version_*/test_metrics.json | head -1
}

train_and_test() {  # name, overlay files...
  local name=$1; shift
  local extra=()
  for overlay in "$@"; do extra+=(-c "$overlay"); done
  stamp "fit $name"
  tracer-pl fit "${BASE[@]}" "${extra[@]}" --trainer.default_root_dir "$OUT/$name" "${FIT_ARGS[@]}"
  stamp "test $name"
  tracer-pl test "${BASE[@]}" "${extra[@]}" --trainer.default_root_dir "$OUT/$name" "${TEST_ARGS[@]}" \
    --ckpt_path "$OUT/$name/checkpoints/last.ckpt"
  stamp "done $name"
}

inference_only() {  # name, overlay, extra args...
  local name=$1 overlay=$2; shift 2
  stamp "test $name"
  tracer-pl test "${BASE[@]}" -c "$overlay" --trainer.default_root_dir "$OUT/$name" "$@"
  stamp "done $name"
}

FIT_ARGS=()
TEST_ARGS=()
train_and_test tracer
inference_only cot configs/baselines/cot.yaml

k=$(python - "$(latest_metrics "$OUT/tracer")" "$(latest_metrics "$OUT/cot")" <<'PY'
import json, sys
from tracer_pl.baselines import budget_matched_samples
tracer, cot = (json.load(open(p)) for p in sys.argv[1:])
pick = lambda m: next(v for k, v in m.items() if k.endswith("/tokens_per_problem") and "@" not in k)
print(budget_matched_samples(pick(tracer), pick(cot)))
PY
)
stamp "majority vote at TRACER's token budget: k=$k"
inference_only "majority_vote_k$k" configs/baselines/majority_vote.yaml --model.evaluation.samples "$k"
inference_only debate configs/baselines/debate.yaml

train_and_test single_agent_gspo configs/baselines/single_agent_gspo.yaml
train_and_test single_agent_grpo configs/baselines/single_agent_grpo.yaml

TEST_ARGS=(--model.evaluation.protocols '[sample]')
for ablation in no_reviewer no_proposer_controller no_counterfactual no_vote_state no_time_state \
                frozen_controllers always_speak_refresh always_keep_skip no_proposer_gspo no_reviewer_gspo; do
  train_and_test "ablation_$ablation" "configs/ablations/$ablation.yaml"
done
stamp "all done"
