#!/bin/sh
# Every writer of ldm onto a full disk: a small tmpfs that the scenario mounts
# in a mount namespace of its own (unshare -m), so that nothing stays mounted
# whatever happens to the test. Each failing write must end with exit status 2
# and one line saying that the disk is full and where, leave no partial file
# (and no partial checkpoint directory), and damage nothing written before.
# Usage: full_disk_scenarios.sh SCENARIO WORK COMMON
# with the environment: LDM (the program), LDM_MPIRUN (mpirun with its options),
# LDM_CONFIGS (configs/). WORK is this scenario's own folder, emptied first;
# COMMON holds what setup made (a tiny DiT on pixels, a tiny autoencoder and
# its pictures). Exit 77 (skipped) with the reason where a tmpfs cannot be
# mounted (not root, a container without CAP_SYS_ADMIN); LDM_REQUIRE_MOUNT=1
# (tests/run.sh sets it: CI runs as root) makes that a failure instead.
#
# Scenarios:
#   setup       the inputs, on an ordinary disk
#   prepare     a disk too small for the data: refused before anything is
#               written; a disk holding the data but not HDF5's metadata: the
#               write fails (1 rank and 2 ranks), no crash in HDF5's clean-up;
#               with the space back, the same command writes the file
#   encode      encode onto a full disk
#   sample      sample .h5 and .png onto a full disk
#   checkpoint  the second checkpoint of a run does not fit: the first stays
#               whole and `latest`, no partial directory; with space added,
#               --resume auto ends the run with the same bytes as a run that
#               never stopped
set -u
scenario=$1; work=$2; common=$3
[ "$scenario" = setup ] && work=$common

skip_or_fail() {
  if [ "${LDM_REQUIRE_MOUNT:-0}" = 1 ]; then echo "FAIL: $* (LDM_REQUIRE_MOUNT=1)" >&2; exit 1; fi
  echo "SKIPPED: $*" >&2; exit 77
}
# Into a mount namespace of our own, once: the tmpfs goes away with the test.
if [ "$scenario" != setup ] && [ "${LDM_FULL_DISK_NAMESPACE:-0}" != 1 ]; then
  command -v unshare >/dev/null || skip_or_fail "no unshare(1) to make a mount namespace"
  unshare -m true 2>/dev/null || skip_or_fail "cannot make a mount namespace (unshare -m: not root?)"
  LDM_FULL_DISK_NAMESPACE=1 exec unshare -m --propagation private sh "$0" "$@"
fi

rm -rf "$work" && mkdir -p "$work" || exit 1
cd "$work" || exit 1

fail() { echo "FAIL: $*" >&2; exit 1; }
run() { echo "+ $*" >&2; "$@" || fail "exit status $? from: $*"; }
tiny="--config $LDM_CONFIGS/tiny.json --set device.type=cpu"

# mount_disk DIR SIZE: a tmpfs of SIZE at DIR.
mount_disk() {
  mkdir -p "$1" && mount -t tmpfs -o "size=$2" ldm-full-disk "$1" ||
    skip_or_fail "cannot mount a tmpfs (mount -t tmpfs: not permitted here)"
}
free_bytes() { df -B1 --output=avail "$1" | tail -n 1 | tr -d ' '; }
# fill DIR LEFT: a file that leaves LEFT bytes free on DIR's disk.
fill() {
  left=$(( $(free_bytes "$1") - $2 ))
  [ "$left" -gt 0 ] && run fallocate -l "$left" "$1/filler"
  [ "$(free_bytes "$1")" = "$2" ] || fail "$1: $(free_bytes "$1") bytes free, wanted $2"
}

# fails_full PATTERN COMMAND...: COMMAND must exit 2 with exactly one line of
# ours on stderr, matching PATTERN (grep -E); Open MPI's own abort banner (the
# block between its lines of dashes) and its "[host:pid]" notices are not ours.
fails_full() {
  pattern=$1; shift
  echo "+ $* (must fail)" >&2
  "$@" > out.log 2> err.log
  status=$?
  sed 's/^/  | /' err.log >&2
  [ "$status" = 2 ] || fail "exit status $status (expected 2) from: $*"
  awk '/^-----------/ { banner = !banner; next } !banner && NF && !/^\[[^]]*\] / { print }' err.log > ours.log
  [ "$(wc -l < ours.log)" = 1 ] || fail "$(wc -l < ours.log) lines of ours on stderr, expected one"
  grep -Eq -- "$pattern" ours.log || fail "stderr does not match: $pattern"
}
# nothing_under DIR NAME: neither NAME nor NAME.partial left in DIR.
nothing_under() {
  [ ! -e "$1/$2" ] || fail "$1/$2 exists after a failed write"
  [ ! -e "$1/$2.partial" ] || fail "$1/$2.partial left behind"
}

case "$scenario" in
setup)
  run "$LDM" prepare synthetic --n 16 --size 8 --classes 4 --channels 4 --out pix.h5 >/dev/null
  run "$LDM" train $tiny --data pix.h5 --set train.steps=2 --set train.ckpt_every=2 --run pix >/dev/null
  run "$LDM" prepare synthetic --n 8 --size 16 --classes 4 --channels 3 --out ae_images.h5 >/dev/null
  run "$LDM" train-ae --config "$LDM_CONFIGS/ae-tiny.json" --set device.type=cpu --data ae_images.h5 --run ae \
    --set train.steps=2 --set train.ckpt_every=2 >/dev/null
  ;;
prepare)
  # 4096 pictures of 16 x 16 x 1 and their labels: 4096 x 260 = 1064960 bytes
  # of data, exactly 260 pages; HDF5's metadata takes a few KiB more.
  disk=$work/disk
  mount_disk "$disk" 2m
  make="$LDM prepare synthetic --n 4096 --size 16 --classes 2 --channels 1 --out $disk/a.h5"
  fill "$disk" 65536
  fails_full "^ldm: error: $disk/a[.]h5: cannot write the output: the disk holding $disk is full \(65536 bytes free, its data needs 1064960\)$" $make
  nothing_under "$disk" a.h5
  rm -f "$disk/filler" && fill "$disk" 1064960
  fails_full "^ldm: error: $disk/a[.]h5: cannot write (/images|/labels|the file's metadata): the disk holding $disk is full \([0-9]+ bytes free\)$" $make
  nothing_under "$disk" a.h5
  fails_full "^ldm: error: (rank 1 on [^:]*: )?$disk/a[.]h5: cannot write (/images|/labels|the file's metadata): the disk holding $disk is full \([0-9]+ bytes free\)$" \
    $LDM_MPIRUN -np 2 $make
  nothing_under "$disk" a.h5
  # The same command with the space back: what failed was the space.
  rm -f "$disk/filler"
  run $make >/dev/null
  [ -s "$disk/a.h5" ] && [ ! -e "$disk/a.h5.partial" ] || fail "no $disk/a.h5 once there was space"
  ;;
encode)
  disk=$work/disk
  mount_disk "$disk" 1m
  fill "$disk" 0
  fails_full "^ldm: error: $disk/lat[.]h5: cannot write the output: the disk holding $disk is full \(0 bytes free, its data needs [0-9]+\)$" \
    "$LDM" encode --ae "$common/ae" --data "$common/ae_images.h5" --out "$disk/lat.h5"
  nothing_under "$disk" lat.h5
  ;;
sample)
  disk=$work/disk
  mount_disk "$disk" 1m
  fill "$disk" 0
  fails_full "^ldm: error: $disk/s[.]h5: cannot write the output: the disk holding $disk is full \(0 bytes free, its data needs [0-9]+\)$" \
    "$LDM" sample --model "$common/pix" --n 4 --steps 2 --out "$disk/s.h5"
  nothing_under "$disk" s.h5
  fails_full "^ldm: error: $disk/s[.]png[.]partial: cannot write PNG: the disk holding $disk is full \((No space left on device|0 bytes free)\)$" \
    "$LDM" sample --model "$common/pix" --n 4 --steps 2 --out "$disk/s.png"
  nothing_under "$disk" s.png
  fails_full "^ldm: error: (rank 1 on [^:]*: )?$disk/s[.]h5: cannot write the output: the disk holding $disk is full" \
    $LDM_MPIRUN -np 2 "$LDM" sample --model "$common/pix" --n 4 --steps 2 --out "$disk/s.h5"
  nothing_under "$disk" s.h5
  ;;
checkpoint)
  # A checkpoint of the tiny DiT is about 2.8 MB: one fits on 4 MiB, two do not.
  run "$LDM" prepare synthetic --n 16 --size 8 --classes 4 --channels 4 --latents float32 --out lat.h5 >/dev/null
  steps="--data lat.h5 --set train.steps=4 --set train.ckpt_every=2 --set train.log_every=1"
  run "$LDM" train $tiny $steps --run straight >/dev/null
  disk=$work/disk
  mount_disk "$disk" 4m
  fails_full "^ldm: error: $disk/run/checkpoints: cannot write the checkpoint step-00000004: the disk holding $disk/run/checkpoints is full \(No space left on device\); it was not kept, \`latest\` is still step-00000002: free space, then resume with --resume auto$" \
    "$LDM" train $tiny $steps --run "$disk/run"
  [ "$(readlink "$disk/run/checkpoints/latest")" = step-00000002 ] || fail "latest is $(readlink "$disk/run/checkpoints/latest")"
  [ "$(ls -A "$disk/run/checkpoints" | tr '\n' ' ')" = "latest step-00000002 " ] ||
    fail "the checkpoints folder holds: $(ls -A "$disk/run/checkpoints")"
  run "$LDM" inspect "$disk/run/checkpoints/step-00000002" >/dev/null
  for f in model ema optimizer; do
    cmp "straight/checkpoints/step-00000002/$f.safetensors" "$disk/run/checkpoints/step-00000002/$f.safetensors" ||
      fail "step 2's $f differs from the run that had space"
  done
  # Space added: the run resumes from step 2 and ends as if it had never stopped.
  run mount -o remount,size=16m "$disk"
  run "$LDM" train $tiny $steps --run "$disk/run" --resume auto >/dev/null
  for f in model ema optimizer; do
    cmp "straight/checkpoints/step-00000004/$f.safetensors" "$disk/run/checkpoints/step-00000004/$f.safetensors" ||
      fail "the resumed run's $f differs from the run that had space"
  done
  cmp straight/model.safetensors "$disk/run/model.safetensors" || fail "the exported weights differ"
  ;;
*) fail "unknown scenario $scenario" ;;
esac
echo "full_disk_scenarios: $scenario passed"
