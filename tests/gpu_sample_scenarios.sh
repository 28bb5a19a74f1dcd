#!/bin/sh
# Command-line scenarios of `ldm sample`, `ldm encode`, `ldm decode` and the
# preview pictures of `ldm train` on a GPU (--device cuda, device.type cuda)
# against the same on the CPU. Usage: gpu_sample_scenarios.sh SCENARIO WORK COMMON
# with the environment: LDM (the program), LDM_MPIRUN (mpirun with its options),
# LDM_PYTHON (python3 with h5py, numpy and PIL), LDM_TESTS (this folder),
# LDM_CONFIGS (configs/). WORK is this scenario's own folder, emptied first;
# COMMON holds what setup made, all trained on the CPU: a tiny DiT on 4-channel
# 8x8 pixels (pix4), its students of ldm distill (student; ranged, distilled over
# guidance scales [1, 3]), an autoencoder (ae), its latents of 6 images
# (ae_images.h5 -> ae_latents.h5) and a DiT trained on them (latae).
#
# Tolerances (every network here runs in fp32; the samplers are fp32 on both
# devices): pictures within 2 of 255 levels of the CPU's, latents and their
# statistics within 1e-5 of the values' largest magnitude (at least 1). On the
# CPU emulation of CUDA the differences are 0 to a few float ulps; on a GPU
# cuBLASLt's and the fused kernels' orders of summation add float rounding.
# 1 and 2 ranks on cuda: the same bytes (a sample, a latent, a decoded picture
# depends on its index and --batch only).
#
# The first cuda command of a scenario is its probe: where ldm refuses cuda (a
# CPU build, no GPU) the scenario is skipped (77), or fails where
# LDM_REQUIRE_GPU=1 says this machine must run it.
set -u
scenario=$1; work=$2; common=$3
[ "$scenario" = setup ] && work=$common
rm -rf "$work" && mkdir -p "$work" || exit 1
cd "$work" || exit 1

fail() { echo "FAIL: $*" >&2; exit 1; }
run() { echo "+ $*" >&2; "$@" || fail "exit status $? from: $*"; }
first_cuda() {
  log=$1; shift
  echo "+ $*" >&2
  "$@" > "$log" 2>&1; status=$?
  cat "$log"
  if [ $status != 0 ] && grep -Eq "(option --device|device[.]type): cuda: " "$log"; then
    [ "${LDM_REQUIRE_GPU:-0}" = 1 ] || exit 77
    fail "LDM_REQUIRE_GPU=1 but ldm refuses cuda: $(grep -m 1 'error: ' "$log")"
  fi
  [ $status = 0 ] || fail "exit status $status from: $*"
  grep -q ": device: cuda " "$log" || fail "it does not say it runs on cuda: $*"
}
close() { run "$LDM_PYTHON" "$LDM_TESTS/gpu_compare_outputs.py" "$@"; }
exact() { run "$LDM_PYTHON" "$LDM_TESTS/prepare_compare_h5.py" "$1" "$2"; }
cpu="--set device.type=cpu"
tiny="--config $LDM_CONFIGS/tiny.json $cpu --set train.steps=2 --set train.ckpt_every=2"
# DiTs trained far enough (EMA decay 0.5) that their labels and guidance change the samples.
trained="$tiny --set train.steps=30 --set train.ckpt_every=30 --set train.ema_decay=0.5"

case "$scenario" in
setup)
  run "$LDM" prepare synthetic --classes 4 --n 8 --size 8 --channels 4 --out pix4.h5 >/dev/null
  run "$LDM" prepare synthetic --classes 4 --n 6 --size 16 --channels 3 --out ae_images.h5 >/dev/null
  run "$LDM" train --data pix4.h5 $trained --run pix4 >/dev/null
  run "$LDM" distill --teacher pix4 $tiny --data pix4.h5 --run student >/dev/null
  run "$LDM" distill --teacher pix4 $tiny --data pix4.h5 --run ranged --set distill.guidance_max=3 >/dev/null
  run "$LDM" train-ae --config "$LDM_CONFIGS/ae-tiny.json" $cpu --data ae_images.h5 --run ae --set train.steps=2 \
    --set train.ckpt_every=2 >/dev/null
  run "$LDM" encode --device cpu --ae ae --data ae_images.h5 --out ae_latents.h5 >/dev/null
  run "$LDM" train --data ae_latents.h5 $trained --set model.in_channels=2 --run latae >/dev/null
  ;;
sample-cuda)
  # Each sampler on cuda against the CPU: Heun with guidance (a padded batch),
  # Euler with churn, a student's 2 steps at --sigmas 80,1.5, a guidance-range student's 1 step
  # at scale 2, a latents model decoded by the autoencoder on the device.
  s="$LDM sample --model $common/pix4 --n 3 --batch 2 --steps 2 --cfg 2"
  first_cuda probe.out $s --device cuda --out heun-cuda.h5
  run $s --device cpu --out heun-cpu.h5 >/dev/null
  close heun-cpu.h5 heun-cuda.h5 2
  # The comparison can see guidance: without it the CPU's samples differ beyond the tolerance.
  run "$LDM" sample --model "$common/pix4" --n 3 --batch 2 --steps 2 --device cpu --out unguided-cpu.h5 >/dev/null
  "$LDM_PYTHON" "$LDM_TESTS/gpu_compare_outputs.py" heun-cpu.h5 unguided-cpu.h5 2 >/dev/null 2>&1 &&
    fail "guidance changes no sample of pix4 by more than the tolerance: the comparison could not see it"
  for case in "euler:--model $common/pix4 --sampler euler --steps 3 --churn 10" \
              "student:--model $common/student --sigmas 80,1.5" "ranged:--model $common/ranged --steps 1 --cfg 2" \
              "latents:--model $common/latae --ae $common/ae --steps 2 --cfg 1.5"; do
    name=${case%%:*}; args=${case#*:}
    run "$LDM" sample $args --n 2 --device cpu --out "$name-cpu.h5" >/dev/null
    run "$LDM" sample $args --n 2 --device cuda --out "$name-cuda.h5" >/dev/null
    close "$name-cpu.h5" "$name-cuda.h5" 2
  done
  run "$LDM" sample --model "$common/latae" --ae "$common/ae" --n 2 --steps 2 --device cuda --out grid.png >/dev/null
  [ -s grid.png ] || fail "no grid.png"
  ;;
sample-ranks-cuda)
  # 1 and 2 ranks on cuda (ranks may share a GPU): the same bytes.
  for args in "--model $common/pix4 --cfg 2 --steps 2" "--model $common/latae --ae $common/ae --steps 2" \
              "--model $common/student --steps 2"; do
    rm -f one.h5 two.h5
    first_cuda one.out "$LDM" sample $args --n 3 --batch 2 --device cuda --out one.h5
    run $LDM_MPIRUN -np 2 "$LDM" sample $args --n 3 --batch 2 --device cuda --out two.h5 >/dev/null
    exact one.h5 two.h5
  done
  ;;
encode-cuda)
  # encode (posterior means, and samples) and decode on cuda against the CPU.
  first_cuda probe.out "$LDM" encode --ae "$common/ae" --data "$common/ae_images.h5" --device cuda --out mean-cuda.h5
  run "$LDM" encode --ae "$common/ae" --data "$common/ae_images.h5" --device cpu --out mean-cpu.h5 >/dev/null
  close mean-cpu.h5 mean-cuda.h5 1e-5
  for device in cpu cuda; do
    run "$LDM" encode --ae "$common/ae" --data "$common/ae_images.h5" --sample --seed 3 --batch 4 --device $device \
      --out "sample-$device.h5" >/dev/null
    run "$LDM" decode --ae "$common/ae" --data mean-cpu.h5 --batch 4 --device $device --out "decoded-$device.h5" \
      >/dev/null
  done
  close sample-cpu.h5 sample-cuda.h5 1e-5
  close decoded-cpu.h5 decoded-cuda.h5 2
  run "$LDM" decode --ae "$common/ae" --data mean-cpu.h5 --n 3 --device cuda --out grid.png >/dev/null
  [ -s grid.png ] || fail "no grid.png"
  ;;
encode-ranks-cuda)
  # 1 and 2 ranks on cuda (3 and 3 rows, batches of 4 padded): the same files.
  first_cuda one.out "$LDM" encode --ae "$common/ae" --data "$common/ae_images.h5" --batch 4 --sample --device cuda \
    --out one.h5
  run $LDM_MPIRUN -np 2 "$LDM" encode --ae "$common/ae" --data "$common/ae_images.h5" --batch 4 --sample \
    --device cuda --out two.h5 >/dev/null
  exact one.h5 two.h5
  run "$LDM" decode --ae "$common/ae" --data one.h5 --batch 4 --device cuda --out one-decoded.h5 >/dev/null
  run $LDM_MPIRUN -np 2 "$LDM" decode --ae "$common/ae" --data one.h5 --batch 4 --device cuda \
    --out two-decoded.h5 >/dev/null
  exact one-decoded.h5 two-decoded.h5
  ;;
train-pictures-cuda)
  # ldm train on cuda samples its pictures on the device: the picture of step
  # 1 (one class: 8 pictures, Heun 18 steps, seed 0) against ldm sample on the
  # CPU from the same EMA weights (the run's checkpoint of step 1).
  run "$LDM" prepare synthetic --classes 1 --n 4 --size 8 --channels 4 --out one.h5 >/dev/null
  # A DiT of one block (width 32): 35 network passes on the emulation of CUDA are the cost here.
  first_cuda train.out "$LDM" train --config "$LDM_CONFIGS/tiny.json" --data one.h5 --set device.type=cuda \
    --set model.num_classes=1 --set model.depth=1 --set model.hidden_size=32 --set model.num_heads=2 \
    --set train.steps=1 --set train.batch_size=2 --set train.sample_every=1 --run gpu
  grep -q "^samples: gpu/samples/step-00000001.png (EMA weights, Heun 18 steps, 8 per class)" train.out ||
    fail "no pictures line"
  run "$LDM" sample --model gpu --n 8 --class 0 --device cpu --out cpu.png >/dev/null
  run "$LDM_PYTHON" - <<'PY'
import numpy as np
from PIL import Image
a = np.asarray(Image.open("cpu.png"), dtype=np.int32)
b = np.asarray(Image.open("gpu/samples/step-00000001.png"), dtype=np.int32)
assert a.shape == b.shape, (a.shape, b.shape)
d = np.abs(a - b).max()
print(f"pictures: largest difference {d} of 255 (allowed 2), {np.mean(a != b):.3%} of the values differ")
assert d <= 2 and a.std() > 1, "the GPU's pictures are not the CPU's"
PY
  ;;
distill-pictures-cuda)
  # ldm distill on cuda samples its student's pictures on the device: the
  # picture of step 1 (one class: 8 pictures, the 2-step consistency sampler,
  # seed 0) against ldm sample on the CPU from the same EMA weights.
  run "$LDM" prepare synthetic --classes 1 --n 4 --size 8 --channels 4 --out one.h5 >/dev/null
  small="--config $LDM_CONFIGS/tiny.json --set model.num_classes=1 --set model.depth=1 --set model.hidden_size=32
    --set model.num_heads=2 --set train.batch_size=2"
  # shellcheck disable=SC2086
  run "$LDM" train $small --data one.h5 --set device.type=cpu --set train.steps=2 --set train.ckpt_every=2 \
    --run teacher >/dev/null
  # shellcheck disable=SC2086
  first_cuda distill.out "$LDM" distill --teacher teacher $small --data one.h5 --set device.type=cuda \
    --set train.steps=1 --set train.sample_every=1 --run gpu
  grep -q "^samples: gpu/samples/step-00000001.png (EMA weights, consistency sampler 2 steps, 8 per class)" \
    distill.out || fail "no pictures line"
  run "$LDM" sample --model gpu --steps 2 --n 8 --class 0 --device cpu --out cpu.png >/dev/null
  run "$LDM_PYTHON" - <<'PY'
import numpy as np
from PIL import Image
a = np.asarray(Image.open("cpu.png"), dtype=np.int32)
b = np.asarray(Image.open("gpu/samples/step-00000001.png"), dtype=np.int32)
assert a.shape == b.shape, (a.shape, b.shape)
d = np.abs(a - b).max()
print(f"pictures: largest difference {d} of 255 (allowed 2), {np.mean(a != b):.3%} of the values differ")
assert d <= 2 and a.std() > 1, "the GPU's pictures are not the CPU's"
PY
  ;;
*)
  fail "unknown scenario $scenario"
  ;;
esac
echo "scenario $scenario: ok"
