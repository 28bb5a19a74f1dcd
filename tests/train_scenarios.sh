#!/bin/sh
# Command-line scenarios of `ldm train`, each needing several runs or checks
# after a run. Usage: train_scenarios.sh SCENARIO WORK
# with the environment: LDM (the program), LDM_MPIRUN (mpirun with its options),
# LDM_PYTHON (python3 with numpy), LDM_TESTS (this folder), LDM_CONFIGS (configs/).
# WORK is this scenario's own folder, emptied first.
set -u
scenario=$1; work=$2
rm -rf "$work" && mkdir -p "$work" || exit 1
cd "$work" || exit 1

fail() { echo "FAIL: $*" >&2; exit 1; }
run() { echo "+ $*" >&2; "$@" || fail "exit status $? from: $*"; }
tiny="--config $LDM_CONFIGS/tiny.json"
# A data set of exactly one global batch (8 samples): whatever the world size and
# accumulation, every step's global batch is the whole set, so runs with the same
# global batch see the same samples with the same noise (keyed by sample index).
make_data() { run "$LDM" prepare synthetic --n "${2:-8}" --size 8 --classes 4 --channels 4 --out "$1" >/dev/null; }

case "$scenario" in
equivalence)
  make_data data.h5
  common="train --data data.h5 $tiny --set train.steps=20 --set train.log_every=5"
  run "$LDM" $common --run one
  run $LDM_MPIRUN -np 2 "$LDM" $common --set train.micro_batch=4 --run two_ranks
  run "$LDM" $common --set train.micro_batch=4 --run accumulate
  run "$LDM_PYTHON" "$LDM_TESTS/train_compare_runs.py" one two_ranks --steps 20 --loss-rtol 1e-5 --weights-rtol 1e-4
  run "$LDM_PYTHON" "$LDM_TESTS/train_compare_runs.py" one accumulate --steps 20 --loss-rtol 1e-5 --weights-rtol 1e-4
  run "$LDM_PYTHON" "$LDM_TESTS/train_compare_runs.py" one two_ranks --steps 20 --loss-rtol 1e-5 \
    --weights-rtol 1e-4 --weights ema.safetensors
  # The comparison can fail: another seed gives other losses.
  run "$LDM" $common --set train.seed=1 --run other_seed
  if "$LDM_PYTHON" "$LDM_TESTS/train_compare_runs.py" one other_seed --steps 20 --loss-rtol 1e-5 \
       --weights-rtol 1e-4 >/dev/null 2>&1; then fail "a different seed gave the same run"; fi
  ;;
determinism)
  # The same config, seed and world size: bit-identical losses and weights.
  make_data data.h5 32
  common="train --data data.h5 $tiny --set train.steps=15"
  run $LDM_MPIRUN -np 2 "$LDM" $common --run a
  run $LDM_MPIRUN -np 2 "$LDM" $common --run b
  run "$LDM_PYTHON" "$LDM_TESTS/train_compare_runs.py" a b --steps 15 --exact
  run "$LDM_PYTHON" "$LDM_TESTS/train_compare_runs.py" a b --steps 15 --exact --weights ema.safetensors
  ;;
learns)
  # The tiny config learns: the loss of the last 40 of 200 steps is well below the first 40's.
  make_data data.h5 64
  run "$LDM" train --data data.h5 $tiny --set train.steps=200 --set train.log_every=50 --run run > out.txt
  cat out.txt
  grep -Eq "^step 200/200  loss [0-9.]+  grad_norm [^ ]+  lr [0-9.e+-]+  [0-9.]+ img/s  eta 0:00:00" out.txt ||
    fail "no final progress line"
  [ "$(wc -l < run/metrics.jsonl)" = 200 ] || fail "metrics.jsonl does not have 200 lines"
  run "$LDM_PYTHON" - <<'PY'
import json, sys
rows = [json.loads(l) for l in open("run/metrics.jsonl")]
first = sum(r["loss"] for r in rows[:40]) / 40
last = sum(r["loss"] for r in rows[-40:]) / 40
print(f"mean loss: first 40 steps {first:.4f}, last 40 {last:.4f}")
assert last < 0.7 * first, "the loss did not fall"
assert rows[-1]["images_seen"] == 200 * 8
assert sum(rows[-1]["count_by_sigma"]) == 8 and len(rows[-1]["loss_by_sigma"]) == 6
json.load(open("run/config.json"))["train"]["steps"] == 200 or sys.exit("config.json is not the resolved config")
PY
  # The resolved config is a config ldm reads back.
  run "$LDM" bench --config run/config.json --steps 1 --warmup 0 > /dev/null
  ;;
nonfinite)
  # A non-finite gradient on the last rank only: every rank skips the step, the
  # run goes on, and the step is counted; too many in a row end the run.
  make_data data.h5
  common="train --data data.h5 $tiny --set train.steps=8"
  LDM_TEST_POISON_GRADIENT_STEPS=3 run $LDM_MPIRUN -x LDM_TEST_POISON_GRADIENT_STEPS -np 2 "$LDM" $common --run skip > out.txt
  cat out.txt
  grep -q "step 3: non-finite loss or gradient, step skipped" out.txt || fail "the skip was not reported"
  run "$LDM_PYTHON" - <<'PY'
import json
rows = [json.loads(l) for l in open("skip/metrics.jsonl")]
assert [r["skipped"] for r in rows] == [False, False, True] + [False] * 5, rows
assert rows[-1]["skipped_total"] == 1
PY
  LDM_TEST_POISON_GRADIENT_STEPS=2-8 $LDM_MPIRUN -x LDM_TEST_POISON_GRADIENT_STEPS -np 2 "$LDM" $common \
    --set train.max_nonfinite_steps=3 --run diverge > out.txt 2> err.txt
  status=$?
  cat err.txt
  [ "$status" != 0 ] || fail "a diverging run exited 0"
  grep -q "training diverged: 3 steps in a row with a non-finite loss or gradient, the last at step 4" err.txt ||
    fail "no divergence message"
  ;;
run-directory)
  make_data data.h5
  run "$LDM" train --data data.h5 $tiny --set train.steps=2 --run run >/dev/null
  cp run/model.safetensors before.safetensors
  run sh "$LDM_TESTS/expect_error.sh" 2 "^ldm: error: run: holds another run [(]config.json exists[)]; use --force" -- \
    "$LDM" train --data data.h5 $tiny --set train.steps=2 --run run
  cmp -s run/model.safetensors before.safetensors || fail "a refused run changed the run directory"
  run "$LDM" train --data data.h5 $tiny --set train.steps=3 --run run --force >/dev/null
  [ "$(wc -l < run/metrics.jsonl)" = 3 ] || fail "--force did not start over"
  ;;
*)
  fail "unknown scenario $scenario"
  ;;
esac
echo "ok: $scenario"
