#!/bin/sh
# Bad inputs the other test files did not cover, each refused on 2 ranks: every
# rank ends, with one line and exit status 2 (tests/expect_error.sh), and the
# inputs are left as they were (their checksums before and after).
# Usage: bad_input_scenarios.sh CASE WORK COMMON, with the environment LDM,
# LDM_MPIRUN, LDM_PYTHON (python3 with h5py and numpy), LDM_TESTS, LDM_CONFIGS.
# COMMON holds what `setup` made: a tiny run with a checkpoint at step 2, its
# data set, and data set files each missing one thing the format requires.
set -u
case_name=$1; work=$2; common=$3
[ "$case_name" = setup ] && work=$common
rm -rf "$work" && mkdir -p "$work" && cd "$work" || exit 1
fail() { echo "FAIL: $*" >&2; exit 1; }
run() { echo "+ $*" >&2; "$@" || fail "exit status $? from: $*"; }
tiny="--config $LDM_CONFIGS/tiny.json --set device.type=cpu"

if [ "$case_name" = setup ]; then
  run "$LDM" prepare synthetic --n 16 --size 8 --classes 4 --channels 4 --latents float32 --out lat.h5 >/dev/null
  run "$LDM" train $tiny --data lat.h5 --set train.steps=2 --set train.ckpt_every=2 --run run >/dev/null
  run "$LDM_PYTHON" - <<'PY'
import h5py, numpy as np
def latents(path, n=16, labels=True, attrs=True, std=1.0):
    with h5py.File(path, "w") as f:
        f.create_dataset("latents", data=np.zeros((n, 4, 8, 8), np.float32))
        if labels:
            f.create_dataset("labels", data=np.zeros(n, np.int32))
        if attrs:
            f.attrs["num_classes"] = 4
            f.attrs["latent_mean"] = np.zeros(4)
            f.attrs["latent_std"] = np.full(4, std)
latents("zero-samples.h5", n=0)
latents("zero-std.h5", std=0.0)
with h5py.File("no-num-classes.h5", "w") as f:
    f.create_dataset("latents", data=np.zeros((16, 4, 8, 8), np.float32))
    f.create_dataset("labels", data=np.zeros(16, np.int32))
    f.attrs["latent_mean"] = np.zeros(4); f.attrs["latent_std"] = np.ones(4)
with h5py.File("no-latent-stats.h5", "w") as f:
    f.create_dataset("latents", data=np.zeros((16, 4, 8, 8), np.float32))
    f.create_dataset("labels", data=np.zeros(16, np.int32))
    f.attrs["num_classes"] = 4
with h5py.File("both-kinds.h5", "w") as f:
    f.create_dataset("latents", data=np.zeros((16, 4, 8, 8), np.float32))
    f.create_dataset("images", data=np.zeros((16, 8, 8, 4), np.uint8))
PY
  # Damaged copies of the run: a truncated weights file, a manifest gone, a
  # manifest of another format.
  for damage in truncated no-manifest other-format; do
    run cp -r run "run-$damage"
  done
  step=checkpoints/step-00000002
  run truncate -s 100 "run-truncated/$step/model.safetensors"
  run rm "run-no-manifest/$step/manifest.json"
  run sed -i 's/"ldm-checkpoint"/"another-format"/' "run-other-format/$step/manifest.json"
  printf '{"train": {"steps": 5}, "train": {"steps": 6}}\n' > twice.json
  : > empty.json
  echo "not a folder" > a-file
  find . -type f ! -name checksums.txt | LC_ALL=C sort | xargs md5sum > checksums.txt
  exit 0
fi

# Every case: the command on 2 ranks must fail with its line, and the common
# folder must be byte for byte what setup left.
expect() {
  pattern=$1; shift
  run sh "$LDM_TESTS/expect_error.sh" 2 "$pattern" -- $LDM_MPIRUN -np 2 "$LDM" "$@"
  (cd "$common" && md5sum --quiet -c checksums.txt) || fail "an input was changed"
}
c=$common
step=checkpoints/step-00000002
case "$case_name" in
resume-truncated-weights)
  expect "^ldm: error: $c/run-truncated/$step/model[.]safetensors: 100 bytes, manifest says [0-9]+$" \
    train $tiny --data "$c/lat.h5" --run "$work/run" --resume "$c/run-truncated/$step" ;;
resume-no-manifest)
  expect "^ldm: error: $c/run-no-manifest/$step: no checkpoint that passes verification [(]expected a checkpoint directory or a run directory with checkpoints/[)]$" \
    train $tiny --data "$c/lat.h5" --run "$work/run" --resume "$c/run-no-manifest/$step" ;;
resume-other-format)
  expect "^ldm: error: $c/run-other-format/$step/manifest[.]json: format: expected \"ldm-checkpoint\"$" \
    train $tiny --data "$c/lat.h5" --run "$work/run" --resume "$c/run-other-format/$step" ;;
resume-missing)
  expect "^ldm: error: $work/nowhere: no checkpoint that passes verification" \
    train $tiny --data "$c/lat.h5" --run "$work/run" --resume "$work/nowhere" ;;
run-is-a-file)
  expect "^ldm: error: $c/a-file: exists and is not a directory$" \
    train $tiny --data "$c/lat.h5" --run "$c/a-file" ;;
data-zero-samples)
  expect "^ldm: error: $c/zero-samples[.]h5: /latents: expected at least one sample, found N = 0$" \
    train $tiny --data "$c/zero-samples.h5" --run "$work/run" ;;
data-zero-std)
  expect "^ldm: error: $c/zero-std[.]h5: attribute latent_std[[]0[]]: expected a finite number > 0, found 0$" \
    train $tiny --data "$c/zero-std.h5" --run "$work/run" ;;
data-no-num-classes)
  expect "^ldm: error: $c/no-num-classes[.]h5: attribute num_classes is missing [(]required when /labels is present[)]$" \
    train $tiny --data "$c/no-num-classes.h5" --run "$work/run" ;;
data-no-latent-stats)
  expect "^ldm: error: $c/no-latent-stats[.]h5: attribute latent_mean is missing [(]required for /latents: 4 per-channel means[)]$" \
    train $tiny --data "$c/no-latent-stats.h5" --run "$work/run" ;;
data-both-kinds)
  expect "^ldm: error: $c/both-kinds[.]h5: both /images and /latents are present [(]expected exactly one[)]$" \
    train $tiny --data "$c/both-kinds.h5" --run "$work/run" ;;
config-section-twice)
  expect "^ldm: error: $c/twice[.]json: train: section given twice$" \
    train --config "$c/twice.json" --data "$c/lat.h5" --run "$work/run" ;;
config-empty)
  expect "^ldm: error: $c/empty[.]json: not valid JSON near line 1$" train --config "$c/empty.json" --data "$c/lat.h5" --run "$work/run" ;;
config-comm-timeout)
  expect "^ldm: error: --set comm[.]timeout_s=0: comm[.]timeout_s: expected a number in [(]0, 1000000[]], got 0$" \
    train $tiny --set comm.timeout_s=0 --data "$c/lat.h5" --run "$work/run" ;;
*) fail "unknown case $case_name" ;;
esac
[ ! -e "$work/run/checkpoints" ] || fail "a refused run wrote checkpoints"
echo "bad_input_scenarios: $case_name passed"
