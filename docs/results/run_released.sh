#!/usr/bin/env bash
# The central comparison rerun on the released code's protocol (configs/protocols/released.yaml): TRACER and
# single-agent GSPO trained on the same problems with matched generated tokens (single-agent GSPO stops at TRACER's
# count: TokenBudget), two seeds each, tested in domain and on two task families training never saw, under the
# authors' evaluation protocol (text sampled at the training temperature, controllers' argmax) and under this
# library's default (greedy text, average strategy sampled). Same model, problems and budgets as
# docs/results/run_learning.sh, so the two studies sit side by side in docs/results/learning.md.
#
#   bash docs/results/run_released.sh [OUT] [REPORT]   # defaults: runs/released, docs/results/released
#   QUEUES=b bash docs/results/run_released.sh ...     # one queue only (a: seed 42, b: seed 7)
#
# Resumable: a run whose directory holds a `.done` file is skipped, a finished fit is only tested, an unfinished
# fit resumes from its last checkpoint. Two queues, one CPU thread each.
set -euo pipefail
OUT=${1:-runs/released}
REPORT=${2:-docs/results/released}
OPTIONS='max_terms=2&max_digits=1&allow_negation=false&allow_parentheses=false&operators=+,-'
TRAIN_PROBLEMS=80   # one epoch: 40 batches of 2
TEST_PROBLEMS=200
OOD_PROBLEMS=100
TRAIN="reasoning_gym:basic_arithmetic?size=$TRAIN_PROBLEMS&$OPTIONS"
TEST="reasoning_gym:basic_arithmetic?size=$TEST_PROBLEMS&seed=42&$OPTIONS"
OOD_A="reasoning_gym:products?size=$OOD_PROBLEMS&seed=42&min_terms=2&max_terms=2&min_digits=1&max_digits=1"
OOD_B="reasoning_gym:gcd?size=$OOD_PROBLEMS&seed=42&min_value=1&max_value=20"
ALL_TESTS=(--data.test "[\"$TEST\", \"$OOD_A\", \"$OOD_B\"]")
BASE=(-c configs/quickstart.yaml -c configs/protocols/released.yaml --data.train "$TRAIN" --data.test "$TEST"
      --data.eval_batch_size 20 --trainer.limit_train_batches null --model.backbone.max_new_tokens 48
      --model.gspo.lr 1.0e-4)
# the two evaluation protocols; the preset's own is the authors'
AUTHORS=()
TODAY=(--model.dialogue.eval_greedy true --model.evaluation.protocols '[sample]')
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$OUT"

stamp() { echo "$(date -u +%FT%TZ) $*" | tee -a "$OUT/timings.txt"; }
done_() { [[ -f "$OUT/$1/.done" ]]; }
mark() { mkdir -p "$OUT/$1"; touch "$OUT/$1/.done"; stamp "done $1"; }
fitted() { grep -qs '"finished"' "$OUT/$1"/logs/version_*/fit_status.json; }
wait_for_fit() { until fitted "$1"; do sleep 30; done; }

generated_tokens() {  # the completion tokens a finished fit generated in training (every step's, summed)
  python - "$OUT/$1" <<'PY'
import csv, glob, sys
total = 0.0
for path in glob.glob(f"{sys.argv[1]}/logs/version_*/metrics.csv"):
    for row in csv.DictReader(open(path)):
        if row.get("train/completion_tokens_per_problem"):
            total += float(row["train/completion_tokens_per_problem"]) * 2  # 2 problems per step
print(int(round(total)))
PY
}

fit() {  # name, extra args...
  local name=$1; shift
  fitted "$name" && return 0
  stamp "fit $name"
  tracer-pl fit "${BASE[@]}" --trainer.default_root_dir "$OUT/$name" "$@" --ckpt_path last >> "$OUT/$name.log" 2>&1
  stamp "fitted $name"
}

test_() {  # name (a fitted run), protocol (authors|today), extra args...
  local name=$1 protocol=$2; shift 2
  local run="$name.$protocol"
  done_ "$run" && return 0
  local -n extra="${protocol^^}"
  stamp "test $run"
  tracer-pl test "${BASE[@]}" --trainer.default_root_dir "$OUT/$run" "$@" "${extra[@]}" "${ALL_TESTS[@]}" \
    --ckpt_path "$OUT/$name/checkpoints/last.ckpt" >> "$OUT/$run.log" 2>&1
  mark "$run"
}

queue() {  # seed, suffix
  local seed=$1 suffix=$2
  local seeds=(--seed_everything "$seed" --data.seed "$seed")
  fit "tracer$suffix" "${seeds[@]}"
  local budget
  budget=$(generated_tokens "tracer$suffix")
  stamp "tracer$suffix generated $budget tokens in training: the single-agent budget"
  # single-agent GSPO stops at TRACER's generated tokens (up to 40 passes over the 80 problems)
  fit "single_agent_gspo$suffix" -c configs/baselines/single_agent_gspo.yaml "${seeds[@]}" --trainer.max_epochs 40 \
    --trainer.callbacks+='{"class_path": "tracer_pl.training.budget.TokenBudget", "init_args": {"max_completion_tokens": '"$budget"'}}'
  for protocol in authors today; do
    test_ "tracer$suffix" "$protocol" "${seeds[@]}"
    test_ "single_agent_gspo$suffix" "$protocol" -c configs/baselines/single_agent_gspo.yaml "${seeds[@]}"
  done
}
queue_a() { queue 42 ""; }
queue_b() { queue 7 _seed7; }

QUEUES=${QUEUES:-a b}
stamp "start $(git rev-parse --short HEAD 2>/dev/null || echo unknown), queues: $QUEUES"
pids=()
for q in $QUEUES; do
  "queue_$q" & pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
[[ "$QUEUES" == "a b" ]] || exit 0
stamp "all done"
python docs/results/released_analysis.py "$OUT" "$REPORT"
