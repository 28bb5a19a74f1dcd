#!/bin/sh
# RUN/tb/ (train/tensorboard_log.h) against metrics.jsonl, read by
# tests/check_tensorboard.py with the reader READER (own: its own TFRecord and
# protobuf reader; tensorboard: PyPI tensorboard's) under PYTHON:
#   the DiT    fp16 (the loss scale is a member), pictures every 2 steps, 4 steps
#              with checkpoints every 2; then (step 4's checkpoint moved away) resumed from the checkpoint of step
#              2 to step 6 after a torn record was appended to the events file
#              (a crash in the middle of a write): the steps 3-4 the first run
#              wrote are not there twice, and the torn bytes are gone
#   --force    a new run in the same folder starts a new events file alone
#   the autoencoder  validation PSNR and its reconstruction picture
# Usage: tensorboard_scenarios.sh WORK READER PYTHON
# with the environment LDM (the program) and LDM_TESTS, LDM_CONFIGS.
set -u
work=$1; reader=$2; python=$3
rm -rf "$work" && mkdir -p "$work" && cd "$work" || exit 1
fail() { echo "FAIL: $*" >&2; exit 1; }
run() { echo "+ $*" >&2; "$@" > /dev/null || fail "exit status $? from: $*"; }
check() { "$python" "$LDM_TESTS/check_tensorboard.py" --reader "$reader" "$1" || fail "check_tensorboard on $1"; }

run "$LDM" prepare synthetic --n 16 --size 8 --classes 4 --channels 3 --out images.h5
dit="--config $LDM_CONFIGS/tiny.json --set device.type=cpu --data images.h5 --set model.in_channels=3"
dit="$dit --set model.num_classes=4 --set train.precision=fp16 --set train.log_every=1 --set train.sample_every=2"
run "$LDM" train $dit --set train.steps=4 --set train.ckpt_every=2 --run dit
check dit
[ "$(ls dit/tb | wc -l)" = 1 ] || fail "dit/tb holds $(ls dit/tb | wc -l) files, expected 1"
events=$(ls dit/tb/events.out.tfevents.*)
printf '\017\000\000\000\000\000\000\000torn' >> "$events"
# As if the run had died after logging step 4 but before its checkpoint.
mkdir -p away && mv dit/checkpoints/step-00000004 away/ || fail "cannot move the checkpoint of step 4 away"
run "$LDM" train $dit --set train.steps=6 --set train.ckpt_every=2 --run dit --resume dit/checkpoints/step-00000002
check dit
[ "$(ls dit/tb)" = "$(basename "$events")" ] || fail "the resumed run did not append to $events: $(ls dit/tb)"
grep -q '"step": 6,' dit/metrics.jsonl || fail "the resumed run did not reach step 6"

sleep 1 # another second: another file name
run "$LDM" train $dit --set train.steps=2 --run dit --force
check dit
[ "$(ls dit/tb | wc -l)" = 1 ] && [ "$(ls dit/tb)" != "$(basename "$events")" ] || fail "--force kept the old events file"

run "$LDM" prepare synthetic --n 8 --size 16 --classes 4 --channels 3 --out ae-images.h5
run "$LDM" prepare synthetic --n 4 --size 16 --classes 4 --channels 3 --seed 9 --out held.h5
ae="--config $LDM_CONFIGS/ae-tiny.json --set device.type=cpu --set train.steps=2"
ae="$ae --set train.sample_every=2 --set train.log_every=1"
run "$LDM" train-ae $ae --data ae-images.h5 --val-data held.h5 --run ae
grep -q validation_psnr_db ae/metrics.jsonl || fail "train-ae wrote no PSNR"
check ae
echo "tensorboard_scenarios: $reader reader: all passed"
