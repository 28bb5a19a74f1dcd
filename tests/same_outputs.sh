#!/bin/sh
# Byte-identity check between two builds of ldm on the CPU: runs the tiny
# pipeline with each and compares every file the runs produce.
# Usage: tests/same_outputs.sh OLD_BUILD NEW_BUILD
#   each an ldm binary or a build folder holding one (OLD_BUILD/ldm).
# Exit status: 0 when every file matches, 1 when any differs (their names are
# printed), 2 on a usage error or a failed command.
#
# The pipeline (each binary runs it alone, in a fresh folder; about 10 s per
# binary on an idle 2-core machine, a few minutes on a loaded one):
#   prepare   synthetic pixel images (train and held-out) and synthetic latents
#   train-ae  configs/ae-tiny.json, 4 steps, validation and pictures every 2
#   encode    posterior means (float32) and posterior samples (float16)
#   train     configs/tiny.json on the latents in fp32, bf16 and fp16, 4 steps,
#             checkpoints every 2, a picture decoded by the autoencoder at 4; and
#             fp32 on the synthetic latents under mpirun -np 2
#   distill   the fp32 DiT as teacher, 4 steps, checkpoints every 2, a picture at 4
#   sample    the DiT (Heun, guidance 2, .h5 and .png) and the student
#             (2 steps), both decoded by the autoencoder (--ae)
# Each command's stdout and stderr are kept as files too (logs/NAME.out, .err)
# and compared like the rest.
#
# Both binaries run in the same absolute folder (WORK/run: the first run is
# moved to WORK/old before the second starts in an emptied WORK/run, then moved
# to WORK/new), because ldm records absolute paths in its outputs (encode's
# latents file names the autoencoder checkpoint by its real path, and
# train/distill copy that into state.json, whose CRC is in manifest.json):
# in one folder those bytes are the same for both, so those files are compared
# byte for byte too, with nothing taken out.
#
# What is taken out before comparing, and why (everything else is cmp):
#   metrics.jsonl  the value of "images_per_s" (wall-clock throughput) on each
#                  line, replaced by a placeholder (the key must still be there);
#                  every other field and the line order are compared exactly
#   logs/*.out     on the progress lines "N img/s" and "eta H:MM:SS" (wall clock);
#                  on "checkpoint: DIR (T s, written beside training[, which then
#                  waited T s for it])" the two times and whether the waiting clause
#                  appears at all (the writer thread's timing). Everything else,
#                  losses included, is compared exactly.
#   */tb/events.out.tfevents.*  not compared: TensorBoard's copy of metrics.jsonl
#                  (checked against it by the cli_tensorboard_* tests), whose
#                  name and records hold the wall-clock time
#   logs/*.err     the lines "LABEL: N/M (P%) after XmYYs": progress reports that
#                  ldm prints only once 2 s of wall clock have passed, so whether they
#                  appear depends on the machine's load. Everything else is compared;
#                  except for the mpirun run's stderr (Open MPI's own notices, which
#                  depend on the host's network), which is not compared.
# Set SAME_OUTPUTS_KEEP=1 to keep the folder (it is kept anyway when something
# differs). SAME_OUTPUTS_PERTURB=1 changes the seed of the NEW build's fp32 DiT
# training run: a self-test that this script does fail (see tests/same_outputs.sh
# BUILD BUILD with it set: the DiT, student and sample files must be reported).
set -u

usage() { echo "usage: $0 OLD_BUILD NEW_BUILD (an ldm binary or a build folder holding ldm)" >&2; exit 2; }
[ $# -eq 2 ] || usage
here=$(cd "$(dirname "$0")" && pwd) || exit 2
# The tiny configs: $LDM_CONFIGS, else configs/ beside this script's folder (the
# repository's), else ./configs (a copy of this script run from a checkout).
configs=""
for candidate in ${LDM_CONFIGS:-} "$here/../configs" "$PWD/configs"; do
  [ -f "$candidate/tiny.json" ] && [ -f "$candidate/ae-tiny.json" ] && configs=$(cd "$candidate" && pwd) && break
done
[ -n "$configs" ] || { echo "same_outputs: no configs/tiny.json: set LDM_CONFIGS or run from a checkout" >&2; exit 2; }

# An ldm binary's absolute path, from the binary or its build folder.
resolve_ldm() {
  candidate=$1
  [ -d "$candidate" ] && candidate=$candidate/ldm
  [ -f "$candidate" ] && [ -x "$candidate" ] || { echo "same_outputs: no ldm binary at $1" >&2; exit 2; }
  echo "$(cd "$(dirname "$candidate")" && pwd)/$(basename "$candidate")"
}
old_ldm=$(resolve_ldm "$1") || exit 2
new_ldm=$(resolve_ldm "$2") || exit 2

mpirun_command=${MPIRUN:-mpirun}
command -v "$mpirun_command" >/dev/null || { echo "same_outputs: no $mpirun_command" >&2; exit 2; }
command -v python3 >/dev/null || { echo "same_outputs: no python3" >&2; exit 2; }
work=$(mktemp -d "${TMPDIR:-/tmp}/same_outputs.XXXXXX") || exit 2
# Test hooks and thread settings of the caller must not reach either run.
unset LDM_TEST_POISON_GRADIENT_STEPS

# run_pipeline LDM SEED_OF_THE_FP32_DIT: the whole pipeline in $work/run.
run_pipeline() {
  ldm=$1; dit_seed=$2
  rm -rf "$work/run" && mkdir -p "$work/run/logs" && cd "$work/run" || return 1
  # step NAME COMMAND...: runs it, its output in logs/NAME.out and .err.
  step() {
    name=$1; shift
    "$@" > "logs/$name.out" 2> "logs/$name.err" || {
      echo "same_outputs: exit status $? from $name: $*" >&2
      sed 's/^/  /' "logs/$name.err" >&2
      return 1
    }
  }
  cpu="--set device.type=cpu"
  ae="--config $configs/ae-tiny.json $cpu --set train.steps=4 --set train.ckpt_every=2 --set train.sample_every=2"
  ae="$ae --set train.log_every=1"
  # The DiT of configs/tiny.json on the autoencoder's 2 x 8 x 8 latents of 4
  # classes. The preview picture (Heun 18 steps, 8 per class, decoded) costs more
  # than the training steps: one, at the last step, and 4 classes, not 10.
  dit="--config $configs/tiny.json $cpu --data latents.h5 --set model.in_channels=2 --set model.num_classes=4"
  dit="$dit --set train.steps=4 --set train.ckpt_every=2 --set train.sample_every=4 --set train.log_every=1"
  step prepare-images "$ldm" prepare synthetic --n 32 --size 16 --classes 4 --channels 3 --out images.h5 &&
  step prepare-held "$ldm" prepare synthetic --n 8 --size 16 --classes 4 --channels 3 --seed 9 --out held.h5 &&
  step prepare-latents "$ldm" prepare synthetic --n 16 --size 8 --classes 4 --channels 4 --latents float32 \
    --out synthetic-latents.h5 &&
  step train-ae "$ldm" train-ae $ae --data images.h5 --val-data held.h5 --run ae &&
  step encode "$ldm" encode --ae ae --data images.h5 --out latents.h5 &&
  step encode-sample-half "$ldm" encode --ae ae --data images.h5 --out latents-sample-half.h5 --sample --seed 3 \
    --dtype float16 --batch 5 &&
  step train-fp32 "$ldm" train $dit --set train.precision=fp32 --set train.seed="$dit_seed" --run dit-fp32 &&
  step train-bf16 "$ldm" train $dit --set train.precision=bf16 --run dit-bf16 &&
  step train-fp16 "$ldm" train $dit --set train.precision=fp16 --run dit-fp16 &&
  step train-np2 "$mpirun_command" -np 2 --oversubscribe --allow-run-as-root --bind-to none \
    "$ldm" train --config "$configs/tiny.json" $cpu --data synthetic-latents.h5 --set train.steps=3 \
    --set train.ckpt_every=3 --set train.log_every=1 --run dit-np2 &&
  step distill "$ldm" distill --teacher dit-fp32 $dit --run student &&
  step sample-dit-h5 "$ldm" sample --model dit-fp32 --ae ae --n 8 --steps 4 --cfg 2 --class all --out dit-samples.h5 &&
  step sample-dit-png "$ldm" sample --model dit-fp32 --ae ae --n 8 --steps 4 --cfg 2 --out dit-samples.png &&
  step sample-student-h5 "$ldm" sample --model student --ae ae --n 8 --steps 2 --out student-samples.h5 &&
  step sample-student-png "$ldm" sample --model student --ae ae --n 8 --steps 1 --weights model \
    --out student-samples.png
}

started=$(date +%s)
echo "same_outputs: configs from $configs"
echo "same_outputs: OLD $old_ldm"
run_pipeline "$old_ldm" 0 || { echo "same_outputs: the OLD pipeline failed; folder kept: $work" >&2; exit 2; }
mv "$work/run" "$work/old" || exit 2
old_done=$(date +%s)
echo "same_outputs: NEW $new_ldm"
new_seed=0
[ "${SAME_OUTPUTS_PERTURB:-0}" = 1 ] && new_seed=1 && echo "same_outputs: SAME_OUTPUTS_PERTURB=1: the NEW fp32 DiT trains with seed 1"
run_pipeline "$new_ldm" "$new_seed" || { echo "same_outputs: the NEW pipeline failed; folder kept: $work" >&2; exit 2; }
mv "$work/run" "$work/new" || exit 2
new_done=$(date +%s)
cd "$work" || exit 2

# normalize SIDE FILE: SIDE/FILE (SIDE old or new, FILE relative) with the
# wall-clock fields replaced (see the top).
normalize() {
  path=$1/$2
  case "$2" in
  metrics.jsonl | */metrics.jsonl)
    python3 - "$path" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    record = json.loads(line)
    if "images_per_s" in record:
        record["images_per_s"] = "<wall clock>"
    print(json.dumps(record))
PY
    ;;
  logs/*.out)
    sed -E -e 's/[0-9]+([.][0-9]+)? img\/s/<wall clock> img\/s/g' -e 's/eta [0-9:]+/eta <wall clock>/g' \
      -e 's/\([0-9.]+ s, written beside training(, which then waited [0-9.]+ s for it)?\)/(<wall clock>, written beside training)/' \
      "$path"
    ;;
  logs/*.err)
    sed -E '/^[a-z -]+: [0-9]+\/[0-9]+ \([0-9]+%\) after [0-9]+[hm][0-9]+[ms]$/d' "$path"
    ;;
  *) echo "same_outputs: normalize: no rule for $2" >&2; return 1 ;;
  esac
}

# Every file either run produced, once.
( cd old && find . -type f; cd ../new && find . -type f ) | sed 's|^\./||' | LC_ALL=C sort -u > files.txt
compared=0; differing=""
while IFS= read -r file; do
  case "$file" in logs/train-np2.err) echo "skipped  $file (Open MPI's notices)"; continue ;; esac
  case "$file" in */tb/events.out.tfevents.*) echo "skipped  $file (TensorBoard's copy of metrics.jsonl)"; continue ;; esac
  compared=$((compared + 1))
  if [ ! -f "old/$file" ] || [ ! -f "new/$file" ]; then
    side=OLD; [ -f "old/$file" ] && side=NEW
    echo "MISSING  $file (not made by $side)"; differing="$differing $file"; continue
  fi
  case "$file" in
  */metrics.jsonl | logs/*.out | logs/*.err)
    normalize old "$file" > normalized.old && normalize new "$file" > normalized.new || exit 2
    # A rule that dropped a whole file would make any two files equal.
    case "$file" in logs/*.err) ;; *)  # a stderr of progress lines only may become empty
      [ -s "old/$file" ] && [ ! -s normalized.old ] && { echo "same_outputs: normalizing emptied $file" >&2; exit 2; } ;;
    esac
    if cmp -s normalized.old normalized.new; then echo "same     $file (wall-clock fields excluded)"
    else echo "DIFFERS  $file (wall-clock fields excluded)"; differing="$differing $file"; fi
    ;;
  *)
    if cmp -s "old/$file" "new/$file"; then echo "same     $file"
    else echo "DIFFERS  $file"; differing="$differing $file"; fi
    ;;
  esac
done < files.txt

echo "same_outputs: OLD pipeline $((old_done - started)) s, NEW pipeline $((new_done - old_done)) s"
if [ -z "$differing" ]; then
  echo "same_outputs: PASS: all $compared files match"
  [ "${SAME_OUTPUTS_KEEP:-0}" = 1 ] && echo "same_outputs: folder kept: $work" || rm -rf "$work"
  exit 0
fi
count=$(echo $differing | wc -w)
echo "same_outputs: FAIL: $count of $compared files differ:$differing"
echo "same_outputs: folder kept: $work (old/, new/)"
exit 1
