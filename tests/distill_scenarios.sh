#!/bin/sh
# Command-line scenarios of `ldm distill` and of sampling its students.
# Usage: distill_scenarios.sh SCENARIO WORK COMMON with the environment: LDM (the
# program), LDM_MPIRUN (mpirun with its options), LDM_PYTHON (python3 with h5py
# and numpy), LDM_TESTS (this folder), LDM_CONFIGS (configs/).
# WORK is this scenario's own folder, emptied first; COMMON holds what setup
# made: pixel data (data.h5), latents (lat.h5), a tiny DiT teacher (teacher,
# configs/tiny.json, 150 steps, checkpoints at 75 and 150), one of another shape (narrow, hidden_size 32),
# an autoencoder run (ae), a student distilled from the teacher (student) and
# one distilled over guidance scales in [1, 3] (ranged).
set -u
scenario=$1; work=$2; common=$3
[ "$scenario" = setup ] && work=$common
rm -rf "$work" && mkdir -p "$work" || exit 1
cd "$work" || exit 1

fail() { echo "FAIL: $*" >&2; exit 1; }
run() { echo "+ $*" >&2; "$@" || fail "exit status $? from: $*"; }
# The CPU path pinned (device.type auto would take a GPU where there is one);
# the cuda* scenarios distil on the GPU.
tiny="--config $LDM_CONFIGS/tiny.json --set device.type=cpu"
distill() { run "$LDM" distill --teacher "$common/teacher" $tiny --data "$common/data.h5" "$@"; }
same_h5() { run "$LDM_PYTHON" - "$1" "$2" <<'PY'
import sys, h5py, numpy as np
a, b = (h5py.File(p, "r") for p in sys.argv[1:3])
for k in ("images", "labels"):
    assert np.array_equal(a[k][...], b[k][...]), f"{k} differ between {sys.argv[1]} and {sys.argv[2]}"
PY
}

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
# The cuda* scenarios' own teacher (they need no setup): the tiny DiT trained
# 4 steps on the CPU on N (default 8) samples of data.h5; its weights need not
# be good, only open (the adaLN gates move off zero in the first steps).
gpu_teacher() {
  run "$LDM" prepare synthetic --n "${1:-8}" --size 8 --classes 4 --channels 4 --out data.h5 >/dev/null
  run "$LDM" train $tiny --data data.h5 --run teacher --set train.steps=4 --set train.ckpt_every=4 >/dev/null
}
# compare_losses A B STEPS RTOL: the first STEPS losses of runs A and B within RTOL.
compare_losses() {
  run "$LDM_PYTHON" - "$@" <<'PY'
import json, math, sys
a_run, b_run, steps, rtol = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
a = [json.loads(l)["loss"] for l in open(f"{a_run}/metrics.jsonl")]
b = [json.loads(l)["loss"] for l in open(f"{b_run}/metrics.jsonl")]
print(f"{a_run} losses:", " ".join(f"{x:.9g}" for x in a))
print(f"{b_run} losses:", " ".join(f"{x:.9g}" for x in b))
assert len(a) >= steps and len(b) >= steps and all(math.isfinite(x) for x in a + b)
worst = max(abs(x - y) / abs(y) for x, y in zip(a[:steps], b[:steps]))
print(f"largest relative difference over {steps} steps: {worst:.3g} (allowed {rtol})")
assert worst <= rtol, f"{a_run} against {b_run}: losses differ by {worst:.3g} relative"
PY
}

case "$scenario" in
cuda)
  # Distillation on the GPU (device.type cuda, mpirun -np 1), with a student
  # that takes the guidance scale as input (guidance in [1, 3]: the teacher's
  # two passes, the w embedder): its 6 losses are the CPU's to 1e-4 relative
  # (the same draws and noise, the same per-element arithmetic; the networks'
  # sums run in another order: 3e-9 measured on the emulation, whose sums are
  # the CPU's but for the attention's), its student, EMA and target network to
  # 1e-3 of the largest weight (as the CPU's ranks scenario: AdamW turns the
  # rounding noise of the key bias's zero gradient into steps of up to lr;
  # 3e-8 measured on the emulation); a run stopped at step 3 and resumed (--resume auto)
  # ends with the bytes of the straight run (student, EMA, target network,
  # optimizer) and the same losses. Skipped (77) where ldm refuses cuda.
  gpu_teacher
  gpu="--teacher teacher --data data.h5 --set distill.guidance_max=3 --set train.batch_size=4"
  gpu="$gpu --set train.ckpt_every=3 --set train.log_every=1"
  first_gpu_run out.txt $LDM_MPIRUN -np 1 "$LDM" distill $gpu --config "$LDM_CONFIGS/tiny.json" \
    --set device.type=cuda --set train.steps=6 --run gpu
  run "$LDM" distill $gpu $tiny --set train.steps=6 --run cpu >/dev/null
  compare_losses gpu cpu 6 1e-4
  for weights in model.safetensors ema.safetensors checkpoints/step-00000006/target.safetensors; do
    run "$LDM_PYTHON" "$LDM_TESTS/train_compare_runs.py" gpu cpu --steps 6 --loss-rtol 1e-4 --weights-rtol 1e-3 \
      --weights $weights
  done
  run $LDM_MPIRUN -np 1 "$LDM" distill $gpu --config "$LDM_CONFIGS/tiny.json" --set device.type=cuda \
    --set train.steps=3 --run stopped >/dev/null
  run $LDM_MPIRUN -np 1 "$LDM" distill --teacher teacher --data data.h5 --run stopped --resume auto \
    --set train.steps=6 > out.txt
  grep -q "resuming from stopped/checkpoints/step-00000003 at step 3" out.txt || fail "did not resume at step 3"
  grep -q "^train: device: cuda " out.txt || fail "the resumed run does not distil on cuda"
  for f in model.safetensors ema.safetensors target.safetensors optimizer.safetensors; do
    cmp gpu/checkpoints/step-00000006/$f stopped/checkpoints/step-00000006/$f ||
      fail "$f differs between the straight and the resumed run"
  done
  cmp -s gpu/checkpoints/step-00000006/target.safetensors gpu/checkpoints/step-00000006/model.safetensors &&
    fail "the target network equals the student"
  run "$LDM_PYTHON" "$LDM_TESTS/train_compare_runs.py" gpu stopped --steps 6 --exact
  ;;
cuda-ranks)
  # Two ranks on two GPUs (NCCL: the student's gradient all-reduced in slices
  # handed over during its backward pass) distil as one GPU rank does on the
  # same global batch, and so does one rank accumulating two micro-batches:
  # losses to 1e-5, student and target network to 1e-3 of the largest weight
  # (as the CPU's ranks scenario: AdamW turns the rounding noise of the key
  # bias's zero gradient into steps of up to lr). Two samples, a global batch
  # of 2: every step sees both whatever the world size. Skipped (77) where ldm
  # refuses cuda or this host has fewer than two GPUs.
  gpu_teacher 2
  gpu="--teacher teacher --data data.h5 --config $LDM_CONFIGS/tiny.json --set device.type=cuda"
  gpu="$gpu --set train.steps=4 --set train.log_every=1 --set train.batch_size=2 --set distill.guidance=2"
  first_gpu_run two.txt $LDM_MPIRUN -np 2 "$LDM" distill $gpu --set train.micro_batch=1 --run two
  grep -Eq "^train: gradients averaged by NCCL over 2 ranks, in [0-9]+ slices during the backward pass$" two.txt ||
    fail "the two-rank run does not say it averages in slices during backward"
  run $LDM_MPIRUN -np 1 "$LDM" distill $gpu --run one >/dev/null
  run $LDM_MPIRUN -np 1 "$LDM" distill $gpu --set train.micro_batch=1 --run accumulate >/dev/null
  for other in two accumulate; do
    for weights in model.safetensors checkpoints/step-00000004/target.safetensors; do
      run "$LDM_PYTHON" "$LDM_TESTS/train_compare_runs.py" one $other --steps 4 --loss-rtol 1e-5 --weights-rtol 1e-3 \
        --weights $weights
    done
  done
  ;;
cuda-precision)
  # bf16, and fp16 with dynamic loss scaling, on the GPU: the first 3 losses
  # of a guided distillation (guidance 2) follow the CPU's in the same
  # precision to 2e-2 (the GEMMs accumulate in another order, so a value next
  # to a rounding boundary may round the other way), all 4 stay finite, and
  # fp16 records its loss scale; and in fp16 (the scale grows every 2 good
  # steps) 2 steps + --resume auto to 4 end with the bytes of the 4 straight
  # (student, EMA, target network, optimizer), the same losses and the same
  # loss scale, which the checkpoint of step 2 holds grown (2^17). Skipped
  # (77) where ldm refuses cuda.
  gpu_teacher
  for precision in bf16 fp16; do
    common="distill --teacher teacher --data data.h5 --config $LDM_CONFIGS/tiny.json --set train.steps=4"
    common="$common --set train.log_every=1 --set train.batch_size=2 --set train.precision=$precision"
    common="$common --set distill.guidance=2 --set train.ckpt_every=2 --set train.loss_scale_growth_interval=2"
    first_gpu_run probe.txt "$LDM" $common --set device.type=cuda --run gpu-$precision
    run "$LDM" $common --set device.type=cpu --run cpu-$precision >/dev/null
    compare_losses gpu-$precision cpu-$precision 3 2e-2
  done
  grep -q '"loss_scale"' gpu-fp16/metrics.jsonl || fail "fp16 on the GPU does not record its loss scale"
  run "$LDM" $common --set device.type=cuda --set train.steps=2 --run stopped >/dev/null
  run "$LDM" distill --teacher teacher --data data.h5 --run stopped --resume auto --set train.steps=4 > out.txt
  grep -q "resuming from stopped/checkpoints/step-00000002 at step 2" out.txt || fail "did not resume at step 2"
  grep -q "^train: device: cuda " out.txt || fail "the resumed run does not distil on cuda"
  for f in model.safetensors ema.safetensors target.safetensors optimizer.safetensors; do
    cmp gpu-fp16/checkpoints/step-00000004/$f stopped/checkpoints/step-00000004/$f ||
      fail "fp16: $f differs between the straight and the resumed run"
  done
  run "$LDM_PYTHON" "$LDM_TESTS/train_compare_runs.py" gpu-fp16 stopped --steps 4 --exact
  run "$LDM_PYTHON" - <<'PY'
import json
scale = lambda run, step: json.load(open(f"{run}/checkpoints/step-{step:08d}/state.json"))["loss_scale"]
print("fp16 loss scale at step 2:", scale("stopped", 2), "at step 4:", scale("gpu-fp16", 4), scale("stopped", 4))
assert scale("stopped", 2)["scale"] == 131072, scale("stopped", 2)
assert scale("gpu-fp16", 4) == scale("stopped", 4)
PY
  ;;
setup)
  run "$LDM" prepare synthetic --n 64 --size 8 --classes 4 --channels 4 --out data.h5 >/dev/null
  run "$LDM" prepare synthetic --n 16 --size 8 --classes 4 --channels 4 --latents float32 --out lat.h5 >/dev/null
  run "$LDM" prepare synthetic --n 8 --size 16 --classes 2 --channels 3 --out ae_images.h5 >/dev/null
  run "$LDM" train $tiny --data data.h5 --run teacher --set train.steps=150 --set train.ckpt_every=75 \
    --set train.ckpt_keep=2 >/dev/null
  run "$LDM" train $tiny --data data.h5 --run narrow --set model.hidden_size=32 --set train.steps=2 \
    --set train.ckpt_every=2 >/dev/null
  run "$LDM" train-ae --config "$LDM_CONFIGS/ae-tiny.json" --data ae_images.h5 --run ae --set train.steps=2 \
    --set train.ckpt_every=2 >/dev/null
  run "$LDM" distill --teacher teacher $tiny --data data.h5 --run student --set train.steps=20 \
    --set train.ckpt_every=20 > student.out
  grep -q "^distill: teacher .*teacher/checkpoints/step-00000150 (step 150, EMA weights), guidance 1, 18 points" \
    student.out || fail "no distill line: $(cat student.out)"
  run "$LDM" distill --teacher teacher $tiny --data data.h5 --run ranged --set distill.guidance_max=3 \
    --set train.steps=20 --set train.ckpt_every=20 > ranged.out
  grep -q "^distill: teacher .*, guidance 1 to 3 (an input of the student), 18 points" ranged.out ||
    fail "no distill line: $(cat ranged.out)"
  touch existing.h5
  ;;
learns)
  # The distillation loss falls on the tiny config (pseudo-Huber and L2), and the
  # student's checkpoint holds the target network and the consistency record.
  for loss in pseudo_huber l2; do
    distill --run $loss --set train.steps=300 --set train.ckpt_every=300 --set distill.loss=$loss >/dev/null
  done
  run "$LDM_PYTHON" - <<'PY'
import json
for loss in ("pseudo_huber", "l2"):
    values = [json.loads(line)["loss"] for line in open(f"{loss}/metrics.jsonl")]
    assert len(values) == 300, len(values)
    first, last = sum(values[:50]) / 50, sum(values[-50:]) / 50
    print(f"{loss}: mean loss of the first 50 steps {first:.5g}, of the last 50 {last:.5g} ({last / first:.3f})")
    # pseudo-Huber is a distance, L2 its square: it falls by less (measured 0.75 and 0.36).
    assert last < (0.85 if loss == "pseudo_huber" else 0.6) * first, f"{loss}: the loss did not fall: {first} -> {last}"
ckpt = "pseudo_huber/checkpoints/step-00000300"
state = json.load(open(f"{ckpt}/state.json"))
assert state["kind"] == "consistency", state["kind"]
record = state["consistency"]
assert record["teacher"].endswith("teacher/checkpoints/step-00000150 (step 150, ema weights)"), record["teacher"]
assert record["num_points"] == 18 and record["sigma_min"] == 0.002 and record["sigma_max"] == 80, record
assert record["sampling_sigmas"]["1"] == [80] and record["sampling_sigmas"]["2"] == [80, 0.821], record
assert len(record["sampling_sigmas"]["4"]) == 4, record
assert "target.safetensors" in json.load(open(f"{ckpt}/manifest.json"))["files"]
PY
  run "$LDM" inspect pseudo_huber >/dev/null
  ;;
resume-1rank|resume-2ranks)
  # 40 steps straight against 20, stop, --resume auto to 40 (checkpoint every 10):
  # identical losses at every step and identical bytes in the student, its EMA,
  # the target network and the optimizer.
  if [ "$scenario" = resume-2ranks ]; then launch="$LDM_MPIRUN -np 2"; else launch=""; fi
  set_all="--set train.ckpt_every=10 --set train.ckpt_keep=10"
  run $launch "$LDM" distill --teacher "$common/teacher" $tiny --data "$common/data.h5" --run straight \
    --set train.steps=40 $set_all >/dev/null
  run $launch "$LDM" distill --teacher "$common/teacher" $tiny --data "$common/data.h5" --run stopped \
    --set train.steps=20 $set_all >/dev/null
  run $launch "$LDM" distill --teacher "$common/teacher" --data "$common/data.h5" --run stopped --resume auto \
    --set train.steps=40 > out.txt
  grep -q "resuming from stopped/checkpoints/step-00000020 at step 20" out.txt || fail "did not resume at step 20"
  for f in model.safetensors ema.safetensors target.safetensors optimizer.safetensors; do
    cmp straight/checkpoints/step-00000040/$f stopped/checkpoints/step-00000040/$f ||
      fail "$f differs between the straight and the resumed run"
  done
  # The target network moved away from the student (it is its EMA, not a copy).
  cmp -s stopped/checkpoints/step-00000040/target.safetensors stopped/checkpoints/step-00000040/model.safetensors &&
    fail "the target network equals the student"
  run "$LDM_PYTHON" "$LDM_TESTS/train_compare_runs.py" straight stopped --steps 40 --exact
  ;;
ranks)
  # 1 rank with global batch 8 and 2 ranks with micro-batch 4, on 8 samples (so
  # that every step sees them all, whatever the shards): the same losses and
  # weights to rounding (the network's GEMMs round differently for 4 and 8 rows).
  # Weights to 1e-3 of the largest: the attention's key bias has an analytically
  # zero gradient, so AdamW turns the rounding noise of its gradient into steps
  # of up to lr (measured: losses 2e-6 apart, weights 2.3e-4, in qkv.bias).
  run "$LDM" prepare synthetic --n 8 --size 8 --classes 4 --channels 4 --out eight.h5 >/dev/null
  run "$LDM" distill --teacher "$common/teacher" $tiny --data eight.h5 --run one --set train.steps=20 >/dev/null
  run $LDM_MPIRUN -np 2 "$LDM" distill --teacher "$common/teacher" $tiny --data eight.h5 --run two \
    --set train.steps=20 >/dev/null
  run "$LDM_PYTHON" "$LDM_TESTS/train_compare_runs.py" one two --steps 20 --loss-rtol 1e-5 --weights-rtol 1e-3
  run "$LDM_PYTHON" "$LDM_TESTS/train_compare_runs.py" one two --steps 20 --loss-rtol 1e-5 --weights-rtol 1e-3 \
    --weights ema.safetensors
  ;;
sample)
  # ldm sample of a student: 1, 2 and 4 steps give images; 1 and 3 ranks the same
  # file; 2 steps by default; the steps differ from each other; --sigmas.
  for steps in 1 2 4; do
    run "$LDM" sample --model "$common/student" --steps $steps --n 7 --batch 3 --out s$steps.h5 > s$steps.out
    grep -q "consistency sampler $steps step" s$steps.out || fail "no consistency sampler line: $(cat s$steps.out)"
  done
  run $LDM_MPIRUN -np 3 "$LDM" sample --model "$common/student" --steps 2 --n 7 --batch 3 --out three.h5 >/dev/null
  same_h5 s2.h5 three.h5
  run "$LDM" sample --model "$common/student" --n 7 --batch 3 --out default.h5 >/dev/null
  same_h5 s2.h5 default.h5
  run "$LDM" sample --model "$common/student" --steps 4 --n 20 --out grid.png >/dev/null
  # --sigmas: the recorded points given by hand give the same file; others another.
  run "$LDM" sample --model "$common/student" --sigmas 80,0.821 --n 7 --batch 3 --out given.h5 > given.out
  same_h5 s2.h5 given.h5
  run "$LDM" sample --model "$common/student" --sigmas 80,2,0.5 --n 7 --batch 3 --out three_steps.h5 > three.out
  grep -q "consistency sampler 3 steps at sigma 80, 2, 0.5," three.out || fail "no 3-step line: $(cat three.out)"
  run "$LDM_PYTHON" - <<'PY'
import h5py, numpy as np
a, b = (h5py.File(f, "r")["images"][...] for f in ("s2.h5", "three_steps.h5"))
assert not np.array_equal(a, b), "--sigmas 80,2,0.5 gave the 2-step samples"
PY
  run "$LDM_PYTHON" - <<'PY'
import h5py, numpy as np
images = {s: h5py.File(f"s{s}.h5", "r")["images"][...] for s in (1, 2, 4)}
for s, x in images.items():
    assert x.shape == (7, 8, 8, 4) and x.dtype == np.uint8, (s, x.shape)
    assert x.std() > 1, f"{s} steps: flat images"
assert not np.array_equal(images[1], images[2]) and not np.array_equal(images[2], images[4])
PY
  ;;
guidance-range)
  # A student distilled over guidance scales [1, 3] takes the scale as an input:
  # its record says so, its checkpoint holds the guidance MLP, it writes
  # pictures every train.sample_every steps, resume is exact,
  # and ldm sample --cfg gives other images at another scale (the lower end by
  # default), the same on 1 and 2 ranks.
  set_all="--set distill.guidance_max=3 --set train.ckpt_every=10 --set train.ckpt_keep=10"
  # The straight run also writes pictures (at steps 15 and 30): they change nothing of the training.
  distill --run straight --set train.steps=30 --set train.sample_every=15 $set_all > straight.out
  for step in 15 30; do
    [ -s straight/samples/step-000000$step.png ] || fail "no picture at step $step"
  done
  grep -q "samples: straight/samples/step-00000030.png (EMA weights, consistency sampler 2 steps, guidance input 1, 8 per class)" \
    straight.out || fail "no pictures line: $(cat straight.out)"
  distill --run stopped --set train.steps=10 $set_all >/dev/null
  run "$LDM" distill --teacher "$common/teacher" --data "$common/data.h5" --run stopped --resume auto \
    --set train.steps=30 >/dev/null
  for f in model.safetensors ema.safetensors target.safetensors optimizer.safetensors; do
    cmp straight/checkpoints/step-00000030/$f stopped/checkpoints/step-00000030/$f ||
      fail "$f differs between the straight and the resumed run"
  done
  run "$LDM_PYTHON" "$LDM_TESTS/train_compare_runs.py" straight stopped --steps 30 --exact
  for cfg in 1 3; do
    run "$LDM" sample --model straight --cfg $cfg --n 6 --batch 3 --out cfg$cfg.h5 > cfg$cfg.out
    grep -q "consistency sampler 2 steps at sigma 80, 0.821, guidance input $cfg," cfg$cfg.out ||
      fail "no sampler line: $(cat cfg$cfg.out)"
  done
  run "$LDM" sample --model straight --n 6 --batch 3 --out default.h5 >/dev/null
  same_h5 cfg1.h5 default.h5
  run $LDM_MPIRUN -np 2 "$LDM" sample --model straight --cfg 3 --n 6 --batch 3 --out two.h5 >/dev/null
  same_h5 cfg3.h5 two.h5
  run "$LDM_PYTHON" - <<'PY'
import json, struct
import h5py, numpy as np
ckpt = "straight/checkpoints/step-00000030"
record = json.load(open(f"{ckpt}/state.json"))["consistency"]
assert record["guidance"] == 1 and record["guidance_max"] == 3, record
with open(f"{ckpt}/model.safetensors", "rb") as f:
    header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
names = [n for n in header if n.startswith("w_embedder.")]
assert sorted(names) == ["w_embedder.mlp.0.bias", "w_embedder.mlp.0.weight", "w_embedder.mlp.2.bias",
                         "w_embedder.mlp.2.weight"], names
a, b = (h5py.File(f"cfg{c}.h5", "r")["images"][...].astype(float) for c in (1, 3))
print(f"mean |image(cfg 1) - image(cfg 3)| = {np.abs(a - b).mean():.3f}")
assert np.abs(a - b).mean() > 0.1, "the guidance input changed nothing"
PY
  ;;
*)
  fail "unknown scenario $scenario"
  ;;
esac
