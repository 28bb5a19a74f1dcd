#!/bin/sh
# Command-line scenarios of `ldm train`, each needing several runs or checks
# after a run. Usage: train_scenarios.sh SCENARIO WORK
# with the environment: LDM (the program), LDM_POISONED (the program with the
# gradient of the steps LDM_TEST_POISON_GRADIENT_STEPS="FIRST[-LAST]" poisoned
# on the last rank: tests/poisoned_gradient.c), LDM_MPIRUN (mpirun with its options),
# LDM_PYTHON (python3 with numpy), LDM_TESTS (this folder), LDM_CONFIGS (configs/).
# WORK is this scenario's own folder, emptied first.
set -u
scenario=$1; work=$2
rm -rf "$work" && mkdir -p "$work" || exit 1
cd "$work" || exit 1

fail() { echo "FAIL: $*" >&2; exit 1; }
# first_gpu_run LOG COMMAND...: a GPU scenario's first run, which is also its
# probe: where ldm refuses cuda (a CPU build, no GPU, fewer GPUs than ranks)
# the scenario is skipped (77), or fails where LDM_REQUIRE_GPU=1 says this
# machine must run it; otherwise the run must succeed and say it trains on cuda.
first_gpu_run() {
  log=$1; shift
  echo "+ $*" >&2
  "$@" > "$log" 2>&1; status=$?
  cat "$log"
  if [ $status != 0 ] && grep -Eq "device[.]type: cuda: |NCCL needs a GPU of its own" "$log"; then
    [ "${LDM_REQUIRE_GPU:-0}" = 1 ] || exit 77
    fail "LDM_REQUIRE_GPU=1 but ldm refuses to train on cuda: $(grep -m 1 'error: ' "$log")"
  fi
  [ $status = 0 ] || fail "exit status $status from: $*"
  grep -q "^train: device: cuda " "$log" || fail "the run does not say it trains on cuda"
}
run() { echo "+ $*" >&2; "$@" || fail "exit status $? from: $*"; }
# The CPU path pinned (device.type auto would take a GPU where there is one);
# the cuda and ae-cuda scenarios train on the GPU.
tiny="--config $LDM_CONFIGS/tiny.json --set device.type=cpu"
# A data set of exactly one global batch (8 samples unless told): whatever the world size and
# accumulation, every step's global batch is the whole set, so runs with the same
# global batch see the same samples with the same noise (keyed by sample index).
make_data() { run "$LDM" prepare synthetic --n "${2:-8}" --size 8 --classes 4 --channels 4 --out "$1" >/dev/null; }
# The GPU run `stopped`, resumed (output in out.txt) from its checkpoint of step
# $2 to step $3, against the run $1 that went straight there: bit for bit.
check_cuda_resume() {
  grep -q "resuming from stopped/checkpoints/step-$(printf %08d "$2") at step $2" out.txt ||
    fail "did not resume at step $2"
  grep -q "^train: device: cuda " out.txt || fail "the resumed run does not train on cuda"
  run "$LDM_PYTHON" "$LDM_TESTS/train_compare_runs.py" "$1" stopped --steps "$3" --exact
  for f in model.safetensors ema.safetensors "checkpoints/step-$(printf %08d "$3")/optimizer.safetensors"; do
    cmp "$1/$f" "stopped/$f" || fail "$f differs between the straight and the resumed run"
  done
}

case "$scenario" in
cuda)
  # The DiT on the GPU (device.type cuda, mpirun -np 1): its first 5 losses are
  # the CPU's to 1e-4 (the same noise, the loss on the host: only the network's
  # summation order differs), the loss falls (the last 3 steps of 6 below the
  # first 3), and a resumed run is exact (6 steps straight against 3 +
  # --resume auto to 6). Skipped (77) where ldm refuses cuda (a CPU build, no
  # GPU). An emulated step costs about 0.2 s of CPU a sample: batches of 4 from
  # 8 images, 12 GPU steps in all.
  # No warmup and lr 3e-3, so that 6 steps show the loss falling whatever order the samples come in.
  make_data data.h5
  fast="--set train.warmup_steps=0 --set train.lr=3e-3"
  gpu="--config $LDM_CONFIGS/tiny.json --set device.type=cuda --set train.ckpt_every=3 --set train.batch_size=4 $fast"
  first_gpu_run out.txt $LDM_MPIRUN -np 1 "$LDM" train --data data.h5 $gpu --set train.steps=6 --run gpu
  run "$LDM" train --data data.h5 $tiny --set train.ckpt_every=3 --set train.batch_size=4 $fast --set train.steps=6 \
    --run cpu >/dev/null
  run "$LDM_PYTHON" - <<'PY'
import json, math
gpu = [json.loads(l)["loss"] for l in open("gpu/metrics.jsonl")]
cpu = [json.loads(l)["loss"] for l in open("cpu/metrics.jsonl")]
print("gpu losses:", " ".join(f"{x:.6f}" for x in gpu))
print("cpu losses:", " ".join(f"{x:.6f}" for x in cpu))
assert len(gpu) == 6 and all(math.isfinite(x) for x in gpu)
for step in range(5):
    assert abs(gpu[step] - cpu[step]) <= 1e-4 * abs(cpu[step]), f"step {step + 1}: gpu {gpu[step]} cpu {cpu[step]}"
assert sum(gpu[-3:]) < sum(gpu[:3]), "the loss did not fall"
PY
  run $LDM_MPIRUN -np 1 "$LDM" train --data data.h5 $gpu --set train.steps=3 --run stopped >/dev/null
  run $LDM_MPIRUN -np 1 "$LDM" train --data data.h5 --run stopped --resume auto --set train.steps=6 > out.txt
  check_cuda_resume gpu 3 6
  ;;
ae-cuda)
  # ldm train-ae on the GPU (device.type cuda, mpirun -np 1), the posterior
  # sampled: its losses are the CPU's to 1e-4 (the same posterior noise, the
  # loss's sums in double: only the network's summation order differs), the
  # loss falls (the last 2 steps of 4 below the first 2), the held-out PSNR at
  # steps 2 and 4 (validation on the CPU model from the weights brought back)
  # is the CPU's to 0.01 dB, and a resumed run is exact (4 steps straight
  # against 2 + --resume auto to 4). Skipped (77) where ldm refuses cuda (a CPU
  # build, no GPU). Batches of 2: an emulated step costs about 0.4 s of CPU a
  # sample (the GroupNorm blocks go with the batch, not the image size).
  run "$LDM" prepare synthetic --n 32 --size 16 --classes 4 --channels 3 --out images.h5 >/dev/null
  run "$LDM" prepare synthetic --n 8 --size 16 --classes 4 --channels 3 --seed 9 --out held-out.h5 >/dev/null
  ae="--config $LDM_CONFIGS/ae-tiny.json --data images.h5 --val-data held-out.h5 --set train.batch_size=2"
  ae="$ae --set train.ckpt_every=2 --set train.sample_every=2 --set train.log_every=1 --set autoencoder.sample_posterior=true"
  first_gpu_run out.txt $LDM_MPIRUN -np 1 "$LDM" train-ae $ae --set device.type=cuda --set train.steps=4 --run gpu
  run "$LDM" train-ae $ae --set device.type=cpu --set train.steps=4 --run cpu >/dev/null
  [ -f gpu/samples/step-00000004.png ] || fail "no validation picture"
  run "$LDM_PYTHON" - <<'PY'
import json, math
gpu = [json.loads(l) for l in open("gpu/metrics.jsonl")]
cpu = [json.loads(l) for l in open("cpu/metrics.jsonl")]
print("gpu losses:", " ".join(f"{r['loss']:.6f}" for r in gpu))
print("cpu losses:", " ".join(f"{r['loss']:.6f}" for r in cpu))
assert len(gpu) == 4 and all(math.isfinite(r["loss"]) and "reconstruction" in r and "kl" in r for r in gpu)
for step in range(4):
    g, c = gpu[step]["loss"], cpu[step]["loss"]
    assert abs(g - c) <= 1e-4 * abs(c), f"step {step + 1}: gpu {g} cpu {c}"
assert sum(r["loss"] for r in gpu[-2:]) < sum(r["loss"] for r in gpu[:2]), "the loss did not fall"
psnr = [[r["validation_psnr_db"] for r in rows if "validation_psnr_db" in r] for rows in (gpu, cpu)]
print("validation PSNR gpu, cpu:", psnr)
assert len(psnr[0]) == 2 and all(abs(g - c) <= 0.01 for g, c in zip(*psnr)), psnr
PY
  run $LDM_MPIRUN -np 1 "$LDM" train-ae $ae --set device.type=cuda --set train.steps=2 --run stopped >/dev/null
  run $LDM_MPIRUN -np 1 "$LDM" train-ae --data images.h5 --run stopped --resume auto --set train.steps=4 > out.txt
  check_cuda_resume gpu 2 4
  ;;
cuda-ranks)
  # Two ranks on two GPUs (NCCL: the gradient all-reduced in slices handed over
  # during the backward pass) train as one GPU rank does on the same global
  # batch (losses to 1e-5, weights and EMA to 1e-4), and so does one rank
  # accumulating two micro-batches (slices from the final one only). A
  # gradient poisoned on the last rank at step 3 is skipped by both. Skipped
  # (77) where ldm refuses cuda or this host has fewer than two GPUs. Two
  # images, one global batch of 2 in micro-batches of 1: every step sees both
  # whatever the world size (a larger set is sharded differently by one and
  # two ranks); 4 steps (the poisoned run 3, the last one poisoned).
  make_data data.h5 2
  gpu="--config $LDM_CONFIGS/tiny.json --set device.type=cuda --set train.steps=4 --set train.log_every=1"
  gpu="$gpu --set train.batch_size=2"
  first_gpu_run two.txt $LDM_MPIRUN -np 2 "$LDM" train --data data.h5 $gpu --set train.micro_batch=1 --run two
  grep -Eq "^train: gradients averaged by NCCL over 2 ranks, in [0-9]+ slices during the backward pass$" two.txt ||
    fail "the two-rank run does not say it averages in slices during backward"
  run $LDM_MPIRUN -np 1 "$LDM" train --data data.h5 $gpu --run one >/dev/null
  run $LDM_MPIRUN -np 1 "$LDM" train --data data.h5 $gpu --set train.micro_batch=1 --run accumulate >/dev/null
  for other in two accumulate; do
    run "$LDM_PYTHON" "$LDM_TESTS/train_compare_runs.py" one $other --steps 4 --loss-rtol 1e-5 --weights-rtol 1e-4
    run "$LDM_PYTHON" "$LDM_TESTS/train_compare_runs.py" one $other --steps 4 --loss-rtol 1e-5 --weights-rtol 1e-4 \
      --weights ema.safetensors
  done
  # AdamW hardly sees a gradient's scale, so a sum where the mean belongs would
  # leave losses and weights alike: the gradient norms must agree too.
  run "$LDM_PYTHON" - <<'PY'
import json
norms = {r: [json.loads(l)["grad_norm"] for l in open(f"{r}/metrics.jsonl")] for r in ("one", "two", "accumulate")}
print("gradient norms:", norms)
for other in ("two", "accumulate"):
    for step, (a, b) in enumerate(zip(norms["one"], norms[other]), 1):
        assert abs(a - b) <= 1e-5 * abs(a), f"step {step}: gradient norm {b} ({other}) against {a} (one)"
PY
  LDM_TEST_POISON_GRADIENT_STEPS=3 run $LDM_MPIRUN -x LDM_TEST_POISON_GRADIENT_STEPS -np 2 "$LDM_POISONED" train --data data.h5 $gpu \
    --set train.micro_batch=1 --set train.steps=3 --run poisoned > poisoned.txt
  grep -q "^step 3: non-finite loss or gradient, step skipped (1 skipped so far)" poisoned.txt ||
    fail "the poisoned step 3 was not skipped"
  ;;
cuda-precision)
  # bf16, and fp16 with dynamic loss scaling (the scale taken out and the
  # overflow check on the device), on the GPU: the first 3 losses follow the
  # CPU's in the same precision (2e-2: the GEMMs accumulate in another order, so
  # a value next to a rounding boundary may round the other way), all 4 stay
  # finite, and fp16 records its loss scale. Skipped (77) where ldm refuses
  # cuda. Batches of 2 (an emulated step's cost goes with the batch).
  make_data data.h5
  for precision in bf16 fp16; do
    common="train --data data.h5 --config $LDM_CONFIGS/tiny.json --set train.steps=4 --set train.log_every=1"
    common="$common --set train.batch_size=2 --set train.precision=$precision"
    first_gpu_run probe.txt "$LDM" $common --set device.type=cuda --run gpu-$precision
    run "$LDM" $common --set device.type=cpu --run cpu-$precision >/dev/null
    PRECISION=$precision run "$LDM_PYTHON" - <<'PY'
import json, math, os
precision = os.environ["PRECISION"]
gpu = [json.loads(l) for l in open(f"gpu-{precision}/metrics.jsonl")]
cpu = [json.loads(l) for l in open(f"cpu-{precision}/metrics.jsonl")]
print(precision, "gpu losses:", " ".join(f"{m['loss']:.6f}" for m in gpu))
print(precision, "cpu losses:", " ".join(f"{m['loss']:.6f}" for m in cpu))
assert len(gpu) == 4 and all(math.isfinite(m["loss"]) for m in gpu)
for step in range(3):
    a, b = gpu[step]["loss"], cpu[step]["loss"]
    assert abs(a - b) <= 2e-2 * abs(b), f"{precision} step {step + 1}: gpu {a} cpu {b}"
if precision == "fp16":
    assert all("loss_scale" in m for m in gpu), "fp16 on the GPU does not record its loss scale"
PY
  done
  ;;
checkpoint-beside)
  # Checkpoints are written beside training: with each file's write slowed to
  # 300 ms, step 11 is logged before the checkpoint of step 10 is done, and
  # what that checkpoint holds is step 10's state, not later steps' (its
  # weights and moments are the bytes a 10-step run ends with).
  make_data data.h5
  common="train --data data.h5 $tiny --set train.log_every=1 --set train.ckpt_every=10"
  LDM_TEST_SLOW_CHECKPOINT_MS=300 run "$LDM" $common --set train.steps=12 --run beside > out.txt
  cat out.txt
  line_of() { grep -n "$1" out.txt | head -1 | cut -d: -f1; }
  step11=$(line_of "^step 11/12 ")
  saved10=$(line_of "^checkpoint: beside/checkpoints/step-00000010 (.*written beside training")
  [ -n "$step11" ] && [ -n "$saved10" ] || fail "missing the step 11 line or the step 10 checkpoint line"
  [ "$step11" -lt "$saved10" ] || fail "step 11 did not run while the step 10 checkpoint was written"
  run "$LDM" $common --set train.steps=10 --run ten >/dev/null
  for f in model.safetensors ema.safetensors optimizer.safetensors; do
    cmp beside/checkpoints/step-00000010/$f ten/checkpoints/step-00000010/$f ||
      fail "$f of the step 10 checkpoint written beside training differs from a 10-step run's"
  done
  ;;
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
elastic)
  # One data order for every world size dividing data.virtual_shards (64): 64
  # samples in global batches of 8, 20 steps (2.5 epochs) on 1, 2 and 4 ranks
  # give the same losses and weights (to the all-reduce's rounding) and train on
  # the same samples at the same global positions, each sample once per epoch
  # (LDM_TEST_SAMPLE_LOG); saved on 4 ranks at step 10 and resumed on 2 and on
  # 1, the run goes on as the 4-rank run did; 3 ranks are refused, naming the
  # world sizes that work.
  make_data data.h5 64
  common="train --data data.h5 $tiny --set train.steps=20 --set train.ckpt_every=10"
  for ranks in 1 2 4; do
    LDM_TEST_SAMPLE_LOG=$PWD/w$ranks.samples run $LDM_MPIRUN -x LDM_TEST_SAMPLE_LOG -np $ranks "$LDM" $common \
      --run w$ranks > /dev/null
  done
  for ranks in 2 4; do
    run "$LDM_PYTHON" "$LDM_TESTS/train_compare_runs.py" w1 w$ranks --steps 20 --loss-rtol 1e-5 --weights-rtol 1e-4
  done
  for ranks in 1 2; do
    run $LDM_MPIRUN -np 4 "$LDM" $common --set train.steps=10 --run from4to$ranks > /dev/null
    LDM_TEST_SAMPLE_LOG=$PWD/from4to$ranks.samples run $LDM_MPIRUN -x LDM_TEST_SAMPLE_LOG -np $ranks "$LDM" \
      train --data data.h5 --run from4to$ranks --resume auto --set train.steps=20 > out$ranks.txt
    grep -q "saved by 4 ranks; another world size: the same data order continues" out$ranks.txt ||
      fail "the resume on $ranks ranks does not say the data order continues"
    run "$LDM_PYTHON" "$LDM_TESTS/train_compare_runs.py" w4 from4to$ranks --steps 20 --loss-rtol 1e-5 \
      --weights-rtol 1e-4
  done
  run "$LDM_PYTHON" - <<'PY'
import glob
def positions(name):
    seen = {}
    for path in glob.glob(f"{name}.samples.*"):
        for line in open(path):
            step, position, row = map(int, line.split())
            assert position not in seen, f"{name}: position {position} trained on twice"
            seen[position] = (step, row)
    return seen
runs = {n: positions(n) for n in ("w1", "w2", "w4")}
assert sorted(runs["w1"]) == list(range(160)), "w1: not every position 0..159 trained on"
assert runs["w2"] == runs["w1"] and runs["w4"] == runs["w1"], "1, 2 and 4 ranks trained on other samples"
for epoch in range(2):
    rows = sorted(runs["w1"][p][1] for p in range(64 * epoch, 64 * (epoch + 1)))
    assert rows == list(range(64)), f"epoch {epoch}: not every sample exactly once"
for n in ("from4to1", "from4to2"):
    resumed = positions(n)
    assert resumed == {p: v for p, v in runs["w4"].items() if p >= 80}, f"{n}: other samples after the resume"
print("the same 160 samples at the same positions on 1, 2 and 4 ranks and after resuming 4 -> 2 and 4 -> 1")
PY
  run sh "$LDM_TESTS/expect_error.sh" 2 \
    "^ldm: error: data[.]h5: data[.]virtual_shards: 3 ranks do not divide the 64 virtual shards; run on 1, 2, 4, 8, 16, 32 or 64 ranks" -- \
    $LDM_MPIRUN -np 3 "$LDM" train --data data.h5 $tiny --set train.batch_size=9 --run three
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
  LDM_TEST_POISON_GRADIENT_STEPS=3 run $LDM_MPIRUN -x LDM_TEST_POISON_GRADIENT_STEPS -np 2 "$LDM_POISONED" $common --run skip > out.txt
  cat out.txt
  grep -q "step 3: non-finite loss or gradient, step skipped" out.txt || fail "the skip was not reported"
  run "$LDM_PYTHON" - <<'PY'
import json
rows = [json.loads(l) for l in open("skip/metrics.jsonl")]
assert [r["skipped"] for r in rows] == [False, False, True] + [False] * 5, rows
assert rows[-1]["skipped_total"] == 1
PY
  LDM_TEST_POISON_GRADIENT_STEPS=2-8 $LDM_MPIRUN -x LDM_TEST_POISON_GRADIENT_STEPS -np 2 "$LDM_POISONED" $common \
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
resume-1rank|resume-2ranks)
  # 40 steps straight against 20, stop, resume to 40 (checkpoint every 10):
  # identical losses at every step and identical bytes in every tensor.
  if [ "$scenario" = resume-2ranks ]; then launch="$LDM_MPIRUN -np 2"; else launch=""; fi
  make_data data.h5 32
  common="train --data data.h5 $tiny --set train.ckpt_every=10"
  run $launch "$LDM" $common --set train.steps=40 --run straight >/dev/null
  run $launch "$LDM" $common --set train.steps=20 --run stopped >/dev/null
  run $launch "$LDM" train --data data.h5 --run stopped --resume auto --set train.steps=40 > out.txt
  grep -q "resuming from stopped/checkpoints/step-00000020 at step 20" out.txt || fail "did not resume at step 20"
  run "$LDM_PYTHON" "$LDM_TESTS/train_compare_runs.py" straight stopped --steps 40 --exact
  run "$LDM_PYTHON" "$LDM_TESTS/train_compare_runs.py" straight stopped --steps 40 --exact --weights ema.safetensors
  for f in model ema optimizer; do
    cmp straight/checkpoints/step-00000040/$f.safetensors stopped/checkpoints/step-00000040/$f.safetensors ||
      fail "$f.safetensors of step 40 differs"
  done
  [ "$(wc -l < stopped/metrics.jsonl)" = 40 ] || fail "metrics.jsonl does not hold each of the 40 steps once"
  ls straight/checkpoints > kept.txt
  [ "$(cat kept.txt | tr '\n' ' ')" = "latest step-00000030 step-00000040 " ] || fail "retention kept: $(cat kept.txt)"
  ;;
signal)
  # SIGUSR1 to one rank: a checkpoint at the next step boundary, every rank exits
  # 0; resuming gives what an uninterrupted run of the same length gives.
  make_data data.h5 32
  common="train --data $PWD/data.h5 $tiny --set train.ckpt_every=100000"
  $LDM_MPIRUN -np 2 "$LDM" $common --set train.steps=100000 --run stopped > out.txt 2>&1 &
  launcher=$!
  for _ in $(seq 300); do grep -q "^step *20/" out.txt 2>/dev/null && break; sleep 0.2; done
  rank=$(pgrep -f "$LDM train --data $PWD/data.h5" | head -1)
  [ -n "$rank" ] || fail "no rank process found"
  kill -USR1 "$rank"
  wait $launcher || fail "the stopped run exited $?"
  cat out.txt
  stopped_at=$(sed -n 's/^train: stopped by a signal at step \([0-9]*\);.*/\1/p' out.txt)
  [ -n "$stopped_at" ] || fail "no stop message"
  total=$((stopped_at + 10))
  run $LDM_MPIRUN -np 2 "$LDM" train --data data.h5 --run stopped --resume auto --set train.steps=$total >/dev/null
  run $LDM_MPIRUN -np 2 "$LDM" $common --set train.steps=$total --run straight >/dev/null
  run "$LDM_PYTHON" "$LDM_TESTS/train_compare_runs.py" straight stopped --steps $total --exact
  ;;
resume-world-size)
  # Saved by 2 ranks, resumed on 1 (same global batch): the loss goes on smoothly.
  make_data data.h5 64
  common="train --data data.h5 $tiny --set train.ckpt_every=50"
  run $LDM_MPIRUN -np 2 "$LDM" $common --set train.steps=100 --run run >/dev/null
  run "$LDM" train --data data.h5 --run run --resume auto --set train.steps=150 > out.txt
  grep -q "saved by 2 ranks; another world size" out.txt || fail "the change of world size was not reported"
  run "$LDM_PYTHON" - <<'PY'
import json
rows = [json.loads(l) for l in open("run/metrics.jsonl")]
assert [r["step"] for r in rows] == list(range(1, 151)), "steps missing or repeated"
before = sum(r["loss"] for r in rows[80:100]) / 20
after = sum(r["loss"] for r in rows[100:120]) / 20
print(f"mean loss: steps 81-100 {before:.4f}, 101-120 {after:.4f}")
assert after < 1.5 * before, "the loss jumped after resuming on another world size"
PY
  ;;
resume-mismatch)
  make_data data.h5 32
  run "$LDM" train --data data.h5 $tiny --set train.steps=10 --set train.ckpt_every=5 --run run >/dev/null
  run sh "$LDM_TESTS/expect_error.sh" 2 \
    "^ldm: error: run/checkpoints/step-00000010: model[.]depth is 2 in the checkpoint but 3 in this run's config" -- \
    "$LDM" train --data data.h5 --run run --resume auto --set model.depth=3
  make_data other.h5 16
  run sh "$LDM_TESTS/expect_error.sh" 2 \
    "^ldm: error: run/checkpoints/step-00000010: trained on a data set of 32 images 4x8x8 with 4 classes, but other[.]h5 holds 16" -- \
    "$LDM" train --data other.h5 --run run --resume auto
  run sh "$LDM_TESTS/expect_error.sh" 2 "^ldm: error: nowhere: no checkpoint that passes verification" -- \
    "$LDM" train --data data.h5 --run run --resume nowhere
  run sh "$LDM_TESTS/expect_error.sh" 2 \
    "^ldm: error: run: holds a newer checkpoint [(]run/checkpoints/step-00000010[)] than run/checkpoints/step-00000005" -- \
    "$LDM" train --data data.h5 --run run --resume run/checkpoints/step-00000005
  # --resume auto on a fresh directory starts from step 0.
  run "$LDM" train --data data.h5 $tiny --set train.steps=3 --run fresh --resume auto > out.txt
  grep -q "no checkpoint in fresh: starting from step 0" out.txt || fail "auto on a fresh run did not start over"
  ;;
crash)
  # kill -9 of one rank while a checkpoint is being written (slowed down), then
  # --resume auto: it resumes from a whole checkpoint, never the partial one.
  make_data data.h5 32
  common="train --data $PWD/data.h5 $tiny --set train.ckpt_every=5 --set train.steps=100000"
  LDM_TEST_SLOW_CHECKPOINT_MS=400 $LDM_MPIRUN -x LDM_TEST_SLOW_CHECKPOINT_MS -np 2 "$LDM" $common --run run \
    > out.txt 2>&1 &
  launcher=$!
  # Wait for the second checkpoint's partial directory, then kill a rank in it.
  for _ in $(seq 1200); do
    ls -d run/checkpoints/.partial-step-00000010 >/dev/null 2>&1 && break
    sleep 0.05
  done
  [ -d run/checkpoints/.partial-step-00000010 ] || fail "no checkpoint was being written"
  sleep 0.5
  kill -9 $(pgrep -f "$LDM train --data $PWD/data.h5" | head -1)
  wait $launcher && fail "the job survived a killed rank"
  # Every other rank is gone within 30 seconds.
  for _ in $(seq 300); do
    pgrep -f "$LDM train --data $PWD/data.h5" >/dev/null || break
    sleep 0.1
  done
  pgrep -f "$LDM train --data $PWD/data.h5" && fail "ranks left running"
  ls -la run/checkpoints
  run "$LDM" train --data data.h5 --run run --resume auto --set train.steps=12 > out2.txt
  cat out2.txt
  grep -q "resuming from run/checkpoints/step-00000005 at step 5" out2.txt || fail "did not resume from the whole checkpoint"
  run "$LDM" inspect run > inspect.txt
  ;;
autoencoder)
  # ldm train-ae through the same loop (on the CPU; ae-cuda is the GPU's): the
  # loss falls, the held-out PSNR rises and is logged with a picture, resume is
  # exact on 2 ranks, and the checkpoint of one kind of model is refused by the
  # other command.
  run "$LDM" prepare synthetic --n 64 --size 16 --classes 4 --channels 3 --out images.h5 >/dev/null
  run "$LDM" prepare synthetic --n 16 --size 16 --classes 4 --channels 3 --seed 9 --out held-out.h5 >/dev/null
  ae="--config $LDM_CONFIGS/ae-tiny.json --data images.h5 --val-data held-out.h5 --set device.type=cpu"
  run "$LDM" train-ae $ae --run run > out.txt
  cat out.txt
  [ -f run/samples/step-00000050.png ] && [ -f run/samples/step-00000100.png ] || fail "no validation pictures"
  run "$LDM_PYTHON" - <<'PY'
import json
rows = [json.loads(l) for l in open("run/metrics.jsonl")]
psnr = [r["validation_psnr_db"] for r in rows if "validation_psnr_db" in r]
print("validation PSNR:", psnr)
assert len(psnr) == 2 and psnr[1] > psnr[0] and psnr[1] > 15, psnr
assert sum(r["loss"] for r in rows[-10:]) < 0.6 * sum(r["loss"] for r in rows[:10])
assert all("reconstruction" in r and "kl" in r for r in rows)
PY
  common="train-ae $ae --set train.ckpt_every=10 --set train.sample_every=0"
  run $LDM_MPIRUN -np 2 "$LDM" $common --set train.steps=40 --run straight >/dev/null
  run $LDM_MPIRUN -np 2 "$LDM" $common --set train.steps=20 --run stopped >/dev/null
  run $LDM_MPIRUN -np 2 "$LDM" train-ae --data images.h5 --run stopped --resume auto --set train.steps=40 >/dev/null
  run "$LDM_PYTHON" "$LDM_TESTS/train_compare_runs.py" straight stopped --steps 40 --exact
  run sh "$LDM_TESTS/expect_error.sh" 2 \
    "^ldm: error: run/checkpoints/step-00000100: a checkpoint of kind \"autoencoder\", expected \"dit\"" -- \
    "$LDM" train --config "$LDM_CONFIGS/tiny.json" --set model.in_channels=3 --set model.input_size=16 \
    --data images.h5 --run run --resume run/checkpoints/step-00000100
  ;;
export)
  # A checkpoint of ldm train loads in PyTorch under the DiT names and gives
  # ldm forward's output (exit 77, skipped, without PyTorch).
  make_data data.h5 16
  run "$LDM" train --data data.h5 $tiny --set train.steps=20 --set train.ckpt_every=10 --run run >/dev/null
  "$LDM_PYTHON" "$LDM_TESTS/check_export_torch.py" "$LDM" run/checkpoints/latest check
  exit $?
  ;;
precision-curves)
  # bf16 and fp16 runs of the tiny config follow the fp32 loss curve over 200
  # steps: every step's loss within 2% of fp32's and the mean of each 40 steps
  # within 1% (measured: at most 0.3% and 0.09% in bf16 with the AVX-512 BF16 GEMM,
  # 0.4% and 0.13% without; 0.11% and 0.03% in fp16).
  make_data data.h5 64
  for p in fp32 bf16 fp16; do
    run "$LDM" train --data data.h5 $tiny --set train.steps=200 --set train.log_every=100 \
      --set train.precision=$p --run $p > $p.txt
  done
  run "$LDM_PYTHON" - <<'PY'
import json
runs = {p: [json.loads(l) for l in open(f"{p}/metrics.jsonl")] for p in ("fp32", "bf16", "fp16")}
ref = [r["loss"] for r in runs["fp32"]]
assert len(ref) == 200
for p in ("bf16", "fp16"):
    loss = [r["loss"] for r in runs[p]]
    step = max(abs(a - b) / b for a, b in zip(loss, ref))
    window = max(abs(sum(loss[i:i + 40]) - sum(ref[i:i + 40])) / sum(ref[i:i + 40]) for i in range(0, 200, 40))
    print(f"{p}: largest relative difference to fp32 of a step's loss {step:.2e}, of a 40-step mean {window:.2e}")
    assert step < 0.02 and window < 0.01, p
    assert loss != ref, f"{p} gave fp32's losses: nothing was rounded"
    assert runs[p][-1]["skipped_total"] == 0
    assert all(("loss_scale" in r) == (p == "fp16") for r in runs[p])
    assert sum(loss[-40:]) < 0.7 * sum(loss[:40]), f"{p} did not learn"
PY
  # The autoencoder (activations rounded): 60 steps learn as in fp32, the mean
  # loss of the last 10 within 5% of fp32's (measured 1% in bf16, 3% in fp16).
  run "$LDM" prepare synthetic --n 32 --size 16 --classes 4 --channels 3 --out images.h5 >/dev/null
  for p in fp32 bf16 fp16; do
    run "$LDM" train-ae --config "$LDM_CONFIGS/ae-tiny.json" --data images.h5 --set train.steps=60 \
      --set train.sample_every=0 --set train.precision=$p --run ae_$p > ae_$p.txt
  done
  run "$LDM_PYTHON" - <<'PY'
import json
loss = {p: [json.loads(l)["loss"] for l in open(f"ae_{p}/metrics.jsonl")] for p in ("fp32", "bf16", "fp16")}
ref = sum(loss["fp32"][-10:]) / 10
for p in ("bf16", "fp16"):
    last = sum(loss[p][-10:]) / 10
    print(f"autoencoder {p}: mean loss of the last 10 steps {last:.4f}, fp32 {ref:.4f}")
    assert abs(last - ref) < 0.05 * ref and last < 0.5 * sum(loss[p][:10]) / 10, p
    assert loss[p] != loss["fp32"]
PY
  ;;
precision-overflow)
  # fp16 with a loss scale far too large (2^40): the scaled gradient overflows
  # half's range, the step is skipped and the scale halved until it fits, without
  # counting as divergence; then an Inf injected on the last of 2 ranks only:
  # both skip (the run equals a 1-rank run with the same injection) and the
  # scale halves.
  make_data data.h5
  common="train --data data.h5 $tiny --set train.precision=fp16 --set train.log_every=100"
  run $LDM_MPIRUN -np 2 "$LDM" $common --set train.steps=30 --set train.loss_scale_initial=1099511627776 \
    --run huge > huge.txt
  grep -q "step 1: fp16 gradient overflow at loss scale 1.09951e+12, step skipped, scale halved to 5.49756e+11" \
    huge.txt || fail "the overflow was not reported"
  run "$LDM_PYTHON" - <<'PY'
import json
rows = [json.loads(l) for l in open("huge/metrics.jsonl")]
skipped = [r["skipped"] for r in rows]
first_good = skipped.index(False)
print(f"{first_good} steps skipped, then the scale {rows[first_good]['loss_scale']:g} fits")
# Near the edge of the range a later step may overflow again: each skip halves
# the scale, a good step keeps it (it would grow after 2000).
assert first_good >= 3 and skipped[first_good:].count(True) <= 3, skipped
scale = 2.0 ** 40
for r in rows:
    assert r["loss_scale"] == scale, (r["step"], r["loss_scale"], scale)
    scale = scale / 2 if r["skipped"] else scale
assert rows[-1]["skipped_total"] == skipped.count(True)
state = json.load(open("huge/checkpoints/latest/state.json"))
good_since_last_skip = len(skipped) - 1 - max(i for i, k in enumerate(skipped) if k)
assert state["loss_scale"] == {"scale": scale, "good_steps": good_since_last_skip}, state["loss_scale"]
assert state["skipped_total"] == skipped.count(True)
PY
  poison="--set train.steps=10 --set train.loss_scale_growth_interval=3"
  LDM_TEST_POISON_GRADIENT_STEPS=5 run $LDM_MPIRUN -x LDM_TEST_POISON_GRADIENT_STEPS -np 2 "$LDM_POISONED" $common $poison \
    --set train.micro_batch=4 --run two > two.txt
  LDM_TEST_POISON_GRADIENT_STEPS=5 run "$LDM_POISONED" $common $poison --run one > one.txt
  grep -q "step 5: fp16 gradient overflow at loss scale 131072, step skipped, scale halved to 65536" two.txt ||
    fail "the injected overflow was not reported"
  run "$LDM_PYTHON" "$LDM_TESTS/train_compare_runs.py" one two --steps 10 --loss-rtol 1e-5 --weights-rtol 1e-4
  run "$LDM_PYTHON" - <<'PY'
import json
rows = [json.loads(l) for l in open("two/metrics.jsonl")]
assert [r["skipped"] for r in rows] == [False] * 4 + [True] + [False] * 5
# growth after 3 good steps, halved by the overflow, grown again 3 steps later
assert [r["loss_scale"] for r in rows] == [65536.0] * 3 + [131072.0] * 2 + [65536.0] * 3 + [131072.0] * 2, rows
PY
  ;;
precision-resume)
  # Reruns are bit-identical in bf16 and fp16, and a resumed run equals one that
  # never stopped, the loss scale included (fp16 on 2 ranks: the scale grows
  # every 7 good steps and an injected overflow at step 11 halves it, so that the
  # checkpoint of step 20 holds scale 2^17 after 2 good steps).
  make_data data.h5 32
  for p in bf16 fp16; do
    if [ $p = fp16 ]; then launch="$LDM_MPIRUN -x LDM_TEST_POISON_GRADIENT_STEPS -np 2"; else launch=""; fi
    common="train --data data.h5 $tiny --set train.ckpt_every=10 --set train.precision=$p"
    common="$common --set train.loss_scale_growth_interval=7 --set train.ckpt_keep_every=20"
    export LDM_TEST_POISON_GRADIENT_STEPS=11
    run $launch "$LDM_POISONED" $common --set train.steps=40 --run straight_$p >/dev/null
    run $launch "$LDM_POISONED" $common --set train.steps=40 --run again_$p >/dev/null
    run $launch "$LDM_POISONED" $common --set train.steps=20 --run stopped_$p >/dev/null
    run $launch "$LDM_POISONED" train --data data.h5 --run stopped_$p --resume auto --set train.steps=40 > out_$p.txt
    unset LDM_TEST_POISON_GRADIENT_STEPS
    grep -q "resuming from stopped_$p/checkpoints/step-00000020 at step 20" out_$p.txt || fail "$p: no resume at 20"
    run "$LDM_PYTHON" "$LDM_TESTS/train_compare_runs.py" straight_$p again_$p --steps 40 --exact
    run "$LDM_PYTHON" "$LDM_TESTS/train_compare_runs.py" straight_$p stopped_$p --steps 40 --exact
    for f in model ema optimizer; do
      cmp straight_$p/checkpoints/step-00000040/$f.safetensors stopped_$p/checkpoints/step-00000040/$f.safetensors ||
        fail "$p: $f.safetensors of step 40 differs"
    done
  done
  run "$LDM_PYTHON" - <<'PY'
import json
state = json.load(open("stopped_fp16/checkpoints/step-00000020/state.json"))
assert state["loss_scale"] == {"scale": 131072, "good_steps": 2}, state["loss_scale"]
assert json.load(open("stopped_bf16/checkpoints/step-00000020/state.json"))["loss_scale"]["scale"] == 1
straight = [json.loads(l) for l in open("straight_fp16/metrics.jsonl")]
resumed = [json.loads(l) for l in open("stopped_fp16/metrics.jsonl")]
assert [r["loss_scale"] for r in straight] == [r["loss_scale"] for r in resumed]
assert [r["skipped"] for r in straight].count(True) == 1 and straight[10]["skipped"]
scale, good, expected = 65536.0, 0, []
for step in range(1, 41):
    expected.append(scale)
    if step == 11:
        scale, good = scale / 2, 0
    else:
        good += 1
        if good == 7:
            scale, good = scale * 2, 0
assert [r["loss_scale"] for r in straight] == expected, [r["loss_scale"] for r in straight]
PY
  # A bf16 checkpoint resumed in fp16: the scale starts at its initial value.
  run "$LDM" train --data data.h5 --run stopped_bf16 --resume auto --set train.steps=42 \
    --set train.precision=fp16 >/dev/null
  run "$LDM_PYTHON" - <<'PY'
import json
rows = [json.loads(l) for l in open("stopped_bf16/metrics.jsonl")]
assert [r.get("loss_scale") for r in rows[-3:]] == [None, 65536, 65536], rows[-3:]
PY
  ;;
*)
  fail "unknown scenario $scenario"
  ;;
esac
echo "ok: $scenario"
