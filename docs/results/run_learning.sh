#!/usr/bin/env bash
# Does TRACER learn on the quickstart model? Held-out accuracy before and after training, single-agent GSPO
# trained on the same problems with as many generated tokens, the inference baselines at TRACER's cost, and
# four ablations. Every trained checkpoint (and the base model) is also tested on two task families training
# never saw (out of domain), and TRACER and single-agent GSPO are trained with a second seed. Two queues run side
# by side, one CPU thread each (see docs/results/learning.md for the minutes).
#
#   bash docs/results/run_learning.sh [OUT] [REPORT]   # defaults: runs/learning, docs/results/learning
#   QUEUES=b bash docs/results/run_learning.sh ...     # one queue only (a or b), e.g. to give it another machine
#
# The report (tables, paired tests, plots) goes to REPORT; docs/results/learning.md discusses it.
# A run whose directory holds a `.done` file is skipped, a run whose fit finished is only tested, and an unfinished fit
# resumes from its last checkpoint (saved every 2 batches, and at once on SIGTERM), so the script continues where it
# stopped.
set -euo pipefail
OUT=${1:-runs/learning}
REPORT=${2:-docs/results/learning}
OPTIONS='max_terms=2&max_digits=1&allow_negation=false&allow_parentheses=false&operators=+,-'
TRAIN_PROBLEMS=80   # one epoch: 40 batches of 2
TEST_PROBLEMS=200
TRAIN="reasoning_gym:basic_arithmetic?size=$TRAIN_PROBLEMS&$OPTIONS"
OOD_PROBLEMS=100
# Single-agent GSPO's epochs for TRACER's generated tokens, fixed so that it need not wait for TRACER: 7 matched
# them in this study's first run (TRACER's training tokens over G = 4 samples of CoT's length per problem).
SA_EPOCHS=7
SEED2=7  # the second seed: model, sampling, controllers and the training problems (the test sets stay fixed)
# test sets pin seed=42 so that the second seed's runs are tested on the same problems
TEST="reasoning_gym:basic_arithmetic?size=$TEST_PROBLEMS&seed=42&$OPTIONS"
# out of domain: one-digit products and the GCD of two numbers up to 20; chosen among six reasoning-gym families
# screened on 40 problems each as the two where the base model's CoT accuracy lies in the 20-60% window
OOD_A="reasoning_gym:products?size=$OOD_PROBLEMS&seed=42&min_terms=2&max_terms=2&min_digits=1&max_digits=1"
OOD_B="reasoning_gym:gcd?size=$OOD_PROBLEMS&seed=42&min_value=1&max_value=20"
ALL_TESTS=(--data.test "[\"$TEST\", \"$OOD_A\", \"$OOD_B\"]")
BASE=(-c configs/quickstart.yaml --data.train "$TRAIN" --data.test "$TEST" --data.eval_batch_size 20
      --trainer.limit_train_batches null --model.backbone.max_new_tokens 48 --model.gspo.lr 1.0e-4
      --model.evaluation.protocols '[sample]')
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$OUT"

stamp() { echo "$(date -u +%FT%TZ) $*" | tee -a "$OUT/timings.txt"; }
done_() { [[ -f "$OUT/$1/.done" ]]; }
mark() { touch "$OUT/$1/.done"; stamp "done $1"; }
metrics() { ls -t "$OUT/$1"/logs/version_*/test_metrics.json | head -1; }
wait_for() { until done_ "$1"; do sleep 20; done; }

evaluate() {  # name, extra args...: the untrained adapters and uniform controllers, i.e. the base model
  local name=$1; shift
  done_ "$name" && return 0
  stamp "test $name"
  tracer-pl test "${BASE[@]}" --trainer.default_root_dir "$OUT/$name" "$@" > "$OUT/$name.log" 2>&1
  mark "$name"
}

evaluate_all() {  # the same, in domain and out of domain
  evaluate "$@" "${ALL_TESTS[@]}"
}

fitted() { grep -qs '"finished"' "$OUT/$1"/logs/version_*/fit_status.json; }

train() {  # name, extra args...
  local name=$1; shift
  done_ "$name" && return 0
  if ! fitted "$name"; then  # from the run's last checkpoint if an earlier attempt saved one, else from the start
    stamp "fit $name"
    tracer-pl fit "${BASE[@]}" --trainer.default_root_dir "$OUT/$name" "$@" --ckpt_path last >> "$OUT/$name.log" 2>&1
  fi
  stamp "test $name"
  tracer-pl test "${BASE[@]}" --trainer.default_root_dir "$OUT/$name" "$@" "${ALL_TESTS[@]}" \
    --ckpt_path "$OUT/$name/checkpoints/last.ckpt" >> "$OUT/$name.log" 2>&1
  mark "$name"
}

queue_a() {
  evaluate_all before_tracer
  train tracer
  # the inference baselines at TRACER's cost (in domain only)
  wait_for before_cot
  local k
  k=$(python - "$(metrics tracer)" "$(metrics before_cot)" <<'PY'
import json, sys
from tracer_pl.baselines import budget_matched_samples
tracer, cot = (json.load(open(p)) for p in sys.argv[1:])
pick = lambda m: m["test/basic_arithmetic/tokens_per_problem"]
print(budget_matched_samples(pick(tracer), pick(cot)))
PY
)
  evaluate "majority_vote_k$k" -c configs/baselines/majority_vote.yaml --model.evaluation.samples "$k"
  evaluate debate -c configs/baselines/debate.yaml
  train ablation_no_proposer_controller -c configs/ablations/no_proposer_controller.yaml
  train ablation_no_counterfactual -c configs/ablations/no_counterfactual.yaml
}

queue_b() {
  evaluate_all before_cot -c configs/baselines/cot.yaml
  train ablation_no_reviewer -c configs/ablations/no_reviewer.yaml
  # single-agent GSPO on the same 80 problems: for one epoch (as many optimizer steps and problems as TRACER, far
  # fewer generated tokens), and for SA_EPOCHS epochs (about TRACER's generated tokens; the report gives the ratio)
  train single_agent_gspo_1epoch -c configs/baselines/single_agent_gspo.yaml --trainer.max_epochs 1
  train single_agent_gspo -c configs/baselines/single_agent_gspo.yaml --trainer.max_epochs "$SA_EPOCHS"
  # the second seed, with the first seed's settings
  train single_agent_gspo_seed$SEED2 -c configs/baselines/single_agent_gspo.yaml --trainer.max_epochs "$SA_EPOCHS" \
    --seed_everything "$SEED2" --data.seed "$SEED2"
  train tracer_seed$SEED2 --seed_everything "$SEED2" --data.seed "$SEED2"
  # the last ablation runs here so that both queues hold about as much work (about 280-290 minutes each on the
  # machine of docs/results/learning.md)
  train ablation_no_vote_state -c configs/ablations/no_vote_state.yaml
}

QUEUES=${QUEUES:-a b}
stamp "start $(git rev-parse --short HEAD 2>/dev/null || echo unknown), queues: $QUEUES"
pids=()
for queue in $QUEUES; do
  "queue_$queue" & pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
[[ "$QUEUES" == "a b" ]] || exit 0  # the report needs both queues' runs
stamp "all done"
tracer-pl report "$OUT"/{before_tracer,tracer,before_cot,single_agent_gspo,single_agent_gspo_1epoch} "$OUT"/majority_vote_k*/ "$OUT"/debate \
  "$OUT"/ablation_*/ "$OUT"/*_seed$SEED2/ --paired tracer --paired before_cot --out "$REPORT" \
  --title "Does TRACER learn? SmolLM2-135M on two-term arithmetic, and out of domain" \
  --command "bash docs/results/run_learning.sh $*"
python docs/results/out_of_domain.py "$OUT" "$REPORT"
