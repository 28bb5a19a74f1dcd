#!/bin/sh
# The sample-quality run behind the README's numbers (not part of ctest: it
# trains for about an hour on 2 cores). Usage: tests/fmnist_quality.sh [WORK]
# (default build/quality); LDM (default build/ldm), RANKS (default 2), N (samples
# evaluated, default 10000), CFG (guidance, default 2), STEPS (Heun steps,
# default 18). Stages whose output exists are skipped, so it can be re-run to
# evaluate other sampler settings.
#   1. Fashion-MNIST train and test splits, padded to 32 x 32 (ldm prepare)
#   2. the autoencoder of configs/ae-fmnist.json (ldm train-ae), its latents
#   3. the DiT of configs/dit-fmnist.json on the latents, with RANKS ranks
#   4. N class-conditional samples (class i mod 10), decoded (ldm sample)
#   5. tests/evaluate_fmnist_samples.py (Debian's PyTorch): an independent CNN
#      trained on Fashion-MNIST's idx files labels them; accuracy, variety, FD
#   6. with DISTILL=1: the consistency student of configs/cd-fmnist.json
#      (ldm distill from the DiT, guidance 2 built in), N samples and a grid
#      with its 1, 2 and 4 step sampler, each evaluated like stage 5
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$here/build/quality}
ldm=${LDM:-$here/build/ldm}
ranks=${RANKS:-2}
n=${N:-10000}
cfg=${CFG:-2}
steps=${STEPS:-18}
mkdir -p "$work"
cd "$work"
par() { LDM=$ldm "$here/launch/local.sh" "$ranks" "$@"; }
[ -f train.h5 ] || "$ldm" prepare fashion-mnist --split train --pad 32 --out train.h5
[ -f test.h5 ] || "$ldm" prepare fashion-mnist --split test --pad 32 --out test.h5
[ -f ae/ema.safetensors ] || par train-ae --config "$here/configs/ae-fmnist.json" --data train.h5 --val-data test.h5 \
  --run ae --force
[ -f latents.h5 ] || par encode --ae ae --data train.h5 --out latents.h5
[ -f dit/ema.safetensors ] || par train --config "$here/configs/dit-fmnist.json" --data latents.h5 --run dit --force
out="samples-n$n-cfg$cfg-steps$steps.h5"
[ -f "$out" ] || par sample --model dit --n "$n" --cfg "$cfg" --steps "$steps" --out "$out"
[ -f "grid-cfg$cfg.png" ] || "$ldm" sample --model dit --n 80 --cfg "$cfg" --steps "$steps" --out "grid-cfg$cfg.png"
/usr/bin/python3 "$here/tests/evaluate_fmnist_samples.py" --classifier "$work/classifier.pt" "$out"
[ "${DISTILL:-0}" = 1 ] || exit 0
[ -f cd/ema.safetensors ] || par distill --teacher dit --config "$here/configs/cd-fmnist.json" --data latents.h5 \
  --run cd --force
for student_steps in 1 2 4; do
  out="student-n$n-steps$student_steps.h5"
  [ -f "$out" ] || par sample --model cd --n "$n" --steps "$student_steps" --out "$out"
  [ -f "grid-student-steps$student_steps.png" ] ||
    "$ldm" sample --model cd --n 80 --steps "$student_steps" --out "grid-student-steps$student_steps.png"
  /usr/bin/python3 "$here/tests/evaluate_fmnist_samples.py" --classifier "$work/classifier.pt" "$out"
done
