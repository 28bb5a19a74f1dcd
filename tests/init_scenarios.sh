#!/bin/sh
# `ldm train --init` without PyTorch (tests/check_init_torch.py is the check
# against PyTorch and the converter): the weights of one run's
# model.safetensors start another run exactly (its step poisoned, so skipped:
# RUN/model.safetensors and ema.safetensors are the loaded file's tensors);
# a bf16 copy is accepted; --resume auto takes --init on the first launch and
# the checkpoint on the next; refusals, each one line and exit status 2: a
# missing tensor, a misshapen one, a pos_embed of another embedding, an
# unknown tensor, --init with --resume PATH, --init for train-ae.
# Usage: init_scenarios.sh WORK, with the environment LDM, LDM_POISONED,
# LDM_PYTHON, LDM_TESTS, LDM_CONFIGS, LDM_EXPECT_ERROR.
set -u
work=$1
rm -rf "$work" && mkdir -p "$work" && cd "$work" || exit 1
fail() { echo "FAIL: $*" >&2; exit 1; }
run() { echo "+ $*" >&2; "$@" > last.out 2>&1 || { cat last.out; fail "exit status $? from: $*"; }; }
refused() {
  pattern=$1; shift
  echo "+ $* (refused: $pattern)" >&2
  "$LDM_EXPECT_ERROR" 2 "$pattern" -- "$@" || fail "not refused as expected: $*"
}
# same_tensors A B: every tensor of B equals A's (as float32 values).
same_tensors() {
  "$LDM_PYTHON" - "$1" "$2" <<'PY' || fail "$2 does not hold the tensors of $1"
import sys
sys.path.insert(0, __import__("os").environ["LDM_TESTS"])
from make_bad_init_weights import read
import struct
def values(entry):
    dtype, shape, blob = entry
    if dtype == "F32":
        return struct.unpack("<%df" % (len(blob) // 4), blob)
    words = struct.unpack("<%dH" % (len(blob) // 2), blob)  # BF16
    return tuple(struct.unpack("<f", struct.pack("<I", w << 16))[0] for w in words)
a, b = read(sys.argv[1]), read(sys.argv[2])
assert sorted(a) == sorted(b), (sorted(a), sorted(b))
for name in a:
    if name == "pos_embed":
        continue  # ldm keeps its own fixed embedding
    assert a[name][1] == b[name][1] and values(a[name]) == values(b[name]), name
PY
}

tiny="--config $LDM_CONFIGS/tiny.json --set device.type=cpu --set train.log_every=1"
run "$LDM" prepare synthetic --n 8 --size 8 --classes 4 --channels 4 --latents float32 --out latents.h5
run "$LDM" train $tiny --data latents.h5 --set train.steps=2 --run A

# The weights start a run exactly: its one step poisoned, so skipped.
LDM_TEST_POISON_GRADIENT_STEPS=1 run "$LDM_POISONED" train $tiny --data latents.h5 --set train.steps=1 \
  --init A/model.safetensors --run B
grep -q "^train: initial weights from A/model.safetensors (optimizer state fresh)$" last.out || fail "no line on --init"
grep -q "step skipped" last.out || fail "the poisoned step was not skipped"
same_tensors A/model.safetensors B/model.safetensors
same_tensors A/model.safetensors B/ema.safetensors
# A run from them trains (its loss is not a fresh run's).
run "$LDM" train $tiny --data latents.h5 --set train.steps=1 --init A/model.safetensors --run C
run "$LDM" train $tiny --data latents.h5 --set train.steps=1 --run D
[ "$(head -c 60 C/metrics.jsonl)" != "$(head -c 60 D/metrics.jsonl)" ] || fail "--init left the first loss as a fresh run's"

run "$LDM_PYTHON" "$LDM_TESTS/make_bad_init_weights.py" A/model.safetensors bad
LDM_TEST_POISON_GRADIENT_STEPS=1 run "$LDM_POISONED" train $tiny --data latents.h5 --set train.steps=1 \
  --init bad/bf16.safetensors --run E
same_tensors bad/bf16.safetensors E/model.safetensors

# --resume auto: --init on the first launch, the checkpoint on the next.
run "$LDM" train $tiny --data latents.h5 --set train.steps=1 --init A/model.safetensors --resume auto --run F
grep -q "^train: initial weights from" last.out || fail "--resume auto without a checkpoint did not take --init"
run "$LDM" train $tiny --data latents.h5 --set train.steps=2 --init A/model.safetensors --resume auto --run F
grep -q "^train: initial weights from" last.out && fail "--resume auto with a checkpoint took --init"
grep -q '"step": 2,' F/metrics.jsonl || fail "the second launch did not go on to step 2"

refused "^ldm: error: bad/missing.safetensors: tensor 'blocks.1.mlp.fc2.bias' is missing$" \
  "$LDM" train $tiny --data latents.h5 --init bad/missing.safetensors --run G
refused "^ldm: error: bad/misshapen.safetensors: tensor 'y_embedder.embedding_table.weight' has shape \[10, 64\], the config gives \[11, 64\]$" \
  "$LDM" train $tiny --data latents.h5 --init bad/misshapen.safetensors --run G
refused "^ldm: error: bad/pos-embed.safetensors: tensor 'pos_embed' differs from this model's fixed 2-D sin-cos position embedding at element [0-9]+ .*another grid size or embedding$" \
  "$LDM" train $tiny --data latents.h5 --init bad/pos-embed.safetensors --run G
refused "^ldm: error: bad/unknown.safetensors: tensor 'extra.weight' is not a parameter of this model" \
  "$LDM" train $tiny --data latents.h5 --init bad/unknown.safetensors --run G
refused "^ldm: error: ldm train: --init and --resume A/checkpoints/step-00000002 exclude each other" \
  "$LDM" train $tiny --data latents.h5 --init A/model.safetensors --resume A/checkpoints/step-00000002 --run A
refused "^ldm: error: .*--init" \
  "$LDM" train-ae --config "$LDM_CONFIGS/ae-tiny.json" --data latents.h5 --init A/model.safetensors --run G
[ ! -e G ] || fail "a refused run wrote its run directory"
echo "init_scenarios: all passed"
