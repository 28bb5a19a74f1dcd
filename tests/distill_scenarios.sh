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
tiny="--config $LDM_CONFIGS/tiny.json"
distill() { run "$LDM" distill --teacher "$common/teacher" $tiny --data "$common/data.h5" "$@"; }
same_h5() { run "$LDM_PYTHON" - "$1" "$2" <<'PY'
import sys, h5py, numpy as np
a, b = (h5py.File(p, "r") for p in sys.argv[1:3])
for k in ("images", "labels"):
    assert np.array_equal(a[k][...], b[k][...]), f"{k} differ between {sys.argv[1]} and {sys.argv[2]}"
PY
}

case "$scenario" in
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
