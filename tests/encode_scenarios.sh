#!/bin/sh
# Command-line scenarios of `ldm encode` and `ldm decode`.
# Usage: encode_scenarios.sh SCENARIO WORK COMMON
# with the environment: LDM (the program), LDM_MPIRUN (mpirun with its options),
# LDM_PYTHON (python3 with h5py and numpy; PyTorch optional), LDM_TESTS (this
# folder), LDM_CONFIGS (configs/). WORK is this scenario's own folder, emptied
# first; COMMON holds what the setup scenario made (the cli_encode_setup fixture):
#   images.h5    61 synthetic 16x16x3 images, 4 classes (61: uneven shards on 3 ranks)
#   held.h5      16 other images (the autoencoder's held-out set)
#   ae/          an ldm train-ae run of configs/ae-tiny.json (40 steps, checkpoints 20, 40)
#   latents.h5   images.h5 encoded by it
#   dit/         an ldm train run (a checkpoint of another kind)
#   damaged/     a copy of ae/'s last checkpoint with one byte of ema.safetensors changed
#   diverged/    a copy whose EMA weights hold NaNs (and whose manifest says so)
#   latents4.h5  latents of the wrong shape (4 x 8 x 8), small.h5 (8x8 images),
#   gray.h5      (16x16x1 images), existing.h5 / existing.png (outputs that exist)
set -u
scenario=$1; work=$2; common=$3
if [ "$scenario" = setup ]; then work=$common; fi
rm -rf "$work" && mkdir -p "$work" || exit 1
cd "$work" || exit 1

fail() { echo "FAIL: $*" >&2; exit 1; }
run() { echo "+ $*" >&2; "$@" || fail "exit status $? from: $*"; }
compare() { run "$LDM_PYTHON" "$LDM_TESTS/prepare_compare_h5.py" "$1" "$2"; }
synthetic() { run "$LDM" prepare synthetic --classes 4 "$@" >/dev/null; }
ae="--ae $common/ae"

case "$scenario" in
setup)
  synthetic --n 61 --size 16 --channels 3 --out images.h5
  synthetic --n 16 --size 16 --channels 3 --seed 9 --out held.h5
  run "$LDM" train-ae --config "$LDM_CONFIGS/ae-tiny.json" --data images.h5 --val-data held.h5 --run ae \
    --set train.steps=40 --set train.ckpt_every=20 --set train.sample_every=40 --set train.log_every=20
  run "$LDM" encode --ae ae --data images.h5 --out latents.h5
  synthetic --n 8 --size 8 --channels 4 --latents float32 --out latents4.h5
  synthetic --n 8 --size 8 --channels 3 --out small.h5
  synthetic --n 8 --size 16 --channels 1 --out gray.h5
  run "$LDM" train --config "$LDM_CONFIGS/tiny.json" --data latents4.h5 --run dit --set train.steps=2 >/dev/null
  mkdir damaged && cp ae/checkpoints/step-00000040/* damaged/ || fail "cannot copy the checkpoint"
  "$LDM_PYTHON" -c "
f = open('damaged/ema.safetensors', 'r+b'); f.seek(-1, 2); b = f.read(1); f.seek(-1, 2); f.write(bytes([b[0] ^ 1]))"
  # A diverged autoencoder (NaN weights) whose checkpoint verifies.
  mkdir diverged && cp ae/checkpoints/step-00000040/* diverged/ || fail "cannot copy the checkpoint"
  run "$LDM_PYTHON" - <<'PY'
import json, struct, zlib
path = "diverged/ema.safetensors"
data = bytearray(open(path, "rb").read())
(n,) = struct.unpack("<Q", data[:8])
start, end = json.loads(data[8:8 + n])["quant_conv.bias"]["data_offsets"]
data[8 + n + start:8 + n + end] = struct.pack("<f", float("nan")) * ((end - start) // 4)
open(path, "wb").write(data)
manifest = json.load(open("diverged/manifest.json"))
manifest["files"]["ema.safetensors"] = {"bytes": len(data), "crc32": "%08x" % zlib.crc32(data)}
json.dump(manifest, open("diverged/manifest.json", "w"))
PY
  echo "not to be overwritten" > existing.h5
  echo "not to be overwritten" > existing.png
  ;;
ranks)
  # 1 rank and 3 ranks (uneven shards, another batch size) write the same file,
  # byte for byte in every data set and attribute: means, samples, float16.
  data="--data $common/images.h5"
  run "$LDM" encode $ae $data --out one.h5 > out.txt
  cat out.txt
  grep -q "^encode: wrote one.h5: 61 latents 2 x 8 x 8 float32, 4 classes, from .*/ae/checkpoints/step-00000040 (step 40, ema weights)$" out.txt ||
    fail "no result line"
  run $LDM_MPIRUN -np 3 "$LDM" encode $ae $data --out three.h5 --batch 7 >/dev/null
  compare one.h5 three.h5
  run "$LDM" encode $ae $data --out one-sample.h5 --sample --seed 5 >/dev/null
  run $LDM_MPIRUN -np 3 "$LDM" encode $ae $data --out three-sample.h5 --sample --seed 5 --batch 4 >/dev/null
  compare one-sample.h5 three-sample.h5
  run "$LDM" encode $ae $data --out seed6.h5 --sample --seed 6 >/dev/null
  run "$LDM" encode $ae $data --out one-half.h5 --dtype float16 >/dev/null
  run $LDM_MPIRUN -np 3 "$LDM" encode $ae $data --out three-half.h5 --dtype float16 --batch 64 >/dev/null
  compare one-half.h5 three-half.h5
  run "$LDM" encode $ae $data --out model.h5 --weights model >/dev/null
  # The fixture's file, made by another run, is the same too.
  compare one.h5 "$common/latents.h5"
  run "$LDM_PYTHON" - "$common/images.h5" <<'PY'
import sys
import h5py
import numpy as np

images = h5py.File(sys.argv[1], "r")
def check_stats(path, rtol):
    with h5py.File(path, "r") as f:
        x = f["latents"][...].astype(np.float64)
        mean, std = f.attrs["latent_mean"], f.attrs["latent_std"]
        assert mean.dtype == np.float64 and mean.shape == (2,) and std.shape == (2,), (mean, std)
        want_mean, want_std = x.mean(axis=(0, 2, 3)), x.std(axis=(0, 2, 3))
        err = max(np.abs(mean / want_mean - 1).max(), np.abs(std / want_std - 1).max())
        print(f"{path}: mean {mean} std {std}; relative difference to numpy {err:.2e}")
        assert err <= rtol, (path, mean, want_mean, std, want_std)
        return f["latents"][...]

one = check_stats("one.h5", 1e-6)
sample = check_stats("one-sample.h5", 1e-6)
seed6 = check_stats("seed6.h5", 1e-6)
model = check_stats("model.h5", 1e-6)
# The stored float16 values are the float32 latents rounded; their statistics
# are those of the float32 values, within the rounding.
half = check_stats("one-half.h5", 1e-3)
with h5py.File("one.h5", "r") as f, h5py.File("one-half.h5", "r") as h:
    assert h["latents"].dtype == np.float16
    assert np.array_equal(h["latents"][...], one.astype(np.float16)), "float16 is not the rounded float32"
    assert np.array_equal(h.attrs["latent_mean"], f.attrs["latent_mean"])

with h5py.File("one.h5", "r") as f:
    assert f["latents"].dtype == np.float32 and f["latents"].shape == (61, 2, 8, 8)
    assert np.array_equal(f["labels"][...], images["labels"][...]), "labels not copied"
    assert f.attrs["num_classes"] == images.attrs["num_classes"] == 4
    assert list(f.attrs["class_names"]) == list(images.attrs["class_names"])
    ae = f.attrs["autoencoder"]
    ae = ae.decode() if isinstance(ae, bytes) else ae
    print("autoencoder attribute:", ae)
    assert ae.endswith("/ae/checkpoints/step-00000040 (step 40, ema weights); posterior means"), ae
with h5py.File("one-sample.h5", "r") as f:
    ae = f.attrs["autoencoder"]
    ae = ae.decode() if isinstance(ae, bytes) else ae
    assert ae.endswith("posterior samples (seed 5)"), ae
# A sample is near its mean but not it; another seed, another sample; the model
# weights are not the EMA's.
d = np.abs(sample - one)
print(f"sample - mean: mean |d| {d.mean():.4f}, max {d.max():.4f}")
assert 0 < d.mean() < 3 and not np.array_equal(sample, seed6) and not np.array_equal(one, model)
PY
  # The latents train: the loader takes the file (2 channels of 8x8, 4 classes).
  run "$LDM" train --config "$LDM_CONFIGS/tiny.json" --data one.h5 --run dit --set model.in_channels=2 \
    --set model.num_classes=4 --set train.steps=2 > /dev/null
  ;;
model)
  # The latents are what the model computes: against the PyTorch reference of
  # the autoencoder (tests/ae_reference.py) when PyTorch is there; and without
  # it, decode(encode(x)) on the held-out images has the PSNR train-ae's
  # validation logged. decode writes a data set (1 and 3 ranks alike) and a grid.
  held="--data $common/held.h5"
  run "$LDM" encode $ae $held --weights model --out held.h5 >/dev/null
  run "$LDM" encode $ae $held --weights model --out held-sample.h5 --sample --seed 3 >/dev/null
  run "$LDM" encode $ae $held --weights model --out held-half.h5 --dtype float16 >/dev/null
  run "$LDM" decode $ae --weights model --data held.h5 --out rec.h5 > out.txt
  cat out.txt
  grep -q "^decode: wrote rec.h5: 16 images 16 x 16 x 3, 4 classes, from .*/ae/checkpoints/step-00000040 (step 40, model weights)$" out.txt ||
    fail "no result line"
  run $LDM_MPIRUN -np 3 "$LDM" decode $ae --weights model --data held.h5 --out rec3.h5 --batch 3 >/dev/null
  compare rec.h5 rec3.h5
  run $LDM_MPIRUN -np 3 "$LDM" decode $ae --weights model --data held.h5 --out rec-n5.h5 --n 5 >/dev/null
  run "$LDM" decode $ae --weights model --data held-half.h5 --out rec-half.h5 >/dev/null
  run $LDM_MPIRUN -np 2 "$LDM" decode $ae --weights model --data held.h5 --out grid.png --n 10 >/dev/null
  run "$LDM" decode $ae --weights model --data held.h5 --out all.png >/dev/null
  # The same latents as float32: the float16 file decodes to the same images.
  run "$LDM_PYTHON" - <<'PY'
import h5py
import numpy as np
with h5py.File("held-half.h5", "r") as h, h5py.File("half-as-float32.h5", "w") as f:
    f["latents"] = h["latents"][...].astype(np.float32)
    f["labels"] = h["labels"][...]
    for k, v in h.attrs.items():
        f.attrs[k] = v
PY
  run "$LDM" decode $ae --weights model --data half-as-float32.h5 --out rec-half-as-float32.h5 >/dev/null
  compare rec-half.h5 rec-half-as-float32.h5
  run "$LDM_PYTHON" - "$common" "$LDM_TESTS" <<'PY'
import json
import struct
import sys
import zlib

import h5py
import numpy as np

common, tests = sys.argv[1:3]
checkpoint = f"{common}/ae/checkpoints/step-00000040"
held = h5py.File(f"{common}/held.h5", "r")
originals = held["images"][...]
rec = h5py.File("rec.h5", "r")

# A data set ldm reads: /images uint8 (N, H, W, C), labels and classes copied.
assert rec["images"].dtype == np.uint8 and rec["images"].shape == (16, 16, 16, 3), rec["images"]
assert rec["labels"].dtype == np.int32 and np.array_equal(rec["labels"][...], held["labels"][...])
assert rec.attrs["num_classes"] == 4 and list(rec.attrs["class_names"]) == list(held.attrs["class_names"])
assert "latents" not in rec
with h5py.File("rec-n5.h5", "r") as f:
    assert np.array_equal(f["images"][...], rec["images"][:5]) and np.array_equal(f["labels"][...], rec["labels"][:5])

# decode(encode(x)) against the validation PSNR train-ae logged at step 40 (model
# weights, float reconstructions; here clamped to [0, 255] and rounded, which
# can only bring them closer to the originals' pixels).
x = originals.astype(np.float64) / 127.5 - 1
y = rec["images"][...].astype(np.float64) / 127.5 - 1
psnr = 10 * np.log10(4 / ((x - y) ** 2).mean())
logged = [json.loads(l)["validation_psnr_db"] for l in open(f"{common}/ae/metrics.jsonl")
          if "validation_psnr_db" in json.loads(l)][-1]
print(f"decode(encode(held-out)) PSNR {psnr:.2f} dB; train-ae validation logged {logged:.2f} dB")
assert logged - 0.1 <= psnr <= logged + 2.0, (psnr, logged)

# The PNG grids: 8 per row, the decoded images in order.
def read_png(path):
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", body[:10])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert depth == 8 and color == 2, (depth, color)  # 8-bit RGB
    raw, stride = zlib.decompress(idat), width * 3
    out = np.zeros((height, stride), np.int32)
    for r in range(height):
        f, line = raw[r * (stride + 1)], np.frombuffer(raw, np.uint8, stride, r * (stride + 1) + 1).astype(np.int32)
        prev = out[r - 1] if r else np.zeros(stride, np.int32)
        for i in range(stride):
            a = out[r, i - 3] if i >= 3 else 0
            b, c = prev[i], (prev[i - 3] if i >= 3 else 0)
            if f == 0: v = line[i]
            elif f == 1: v = line[i] + a
            elif f == 2: v = line[i] + b
            elif f == 3: v = line[i] + (a + b) // 2
            else:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                v = line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)
            out[r, i] = v & 255
    return out.reshape(height, width, 3).astype(np.uint8)

for path, n in (("grid.png", 10), ("all.png", 16)):
    grid = read_png(path)
    assert grid.shape == (16 * ((n + 7) // 8), 16 * 8, 3), (path, grid.shape)
    for i in range(n):
        r, c = divmod(i, 8)
        assert np.array_equal(grid[16 * r:16 * r + 16, 16 * c:16 * c + 16], rec["images"][i]), (path, i)
    assert not grid[16:, 16 * 2:].any() if n == 10 else True, "cells after the last image are not black"
print("grids ok")

try:
    import torch
except ImportError:
    print("PyTorch is not installed: the reference comparison is skipped")
    sys.exit(0)
sys.path.insert(0, tests)
from ae_reference import AutoencoderKL
from make_dit_fixture import read_safetensors

a = json.load(open(f"{checkpoint}/state.json"))["config"]["autoencoder"]
model = AutoencoderKL(in_channels=a["in_channels"], input_size=a["input_size"],
                      block_out_channels=a["block_out_channels"], layers_per_block=a["layers_per_block"],
                      latent_channels=a["latent_channels"], norm_groups=a["norm_groups"]).double()
tensors = {k: torch.from_numpy(v.astype(np.float64)) for k, v in read_safetensors(f"{checkpoint}/model.safetensors")[0].items()}
model.load_state_dict(tensors, strict=True)
with torch.no_grad():
    images = torch.from_numpy(originals.transpose(0, 3, 1, 2).astype(np.float64) / 127.5 - 1)
    mean, logvar = (t.numpy() for t in model.encode(images))
    latents = h5py.File("held.h5", "r")["latents"][...]
    decoded = model.decode(torch.from_numpy(latents.astype(np.float64))).numpy()
err = np.abs(latents - mean).max() / np.abs(mean).max()
print(f"encode vs PyTorch: largest difference {err:.2e} of the largest latent")
assert err < 1e-4, err
pixels = np.clip(np.rint((decoded.transpose(0, 2, 3, 1) + 1) * 127.5), 0, 255)
diff = np.abs(pixels - rec["images"][...].astype(np.float64))
print(f"decode vs PyTorch: pixels differ by at most {diff.max():.0f}, {np.mean(diff > 0):.4f} of them at all")
assert diff.max() <= 1 and np.mean(diff > 0) < 0.01, diff.max()
# A posterior sample: (z - mean) / std is standard normal noise.
noise = (h5py.File("held-sample.h5", "r")["latents"][...] - mean) / np.exp(logvar / 2)
print(f"posterior sample noise: mean {noise.mean():.3f}, std {noise.std():.3f} over {noise.size} values")
assert abs(noise.mean()) < 0.1 and 0.9 < noise.std() < 1.1, (noise.mean(), noise.std())
PY
  ;;
failed-run)
  # A failing collective run (one rank meets a non-finite latent is hard to
  # arrange; an image size mismatch ends every rank) leaves neither the output
  # nor its partial file, and an existing output is untouched without --force,
  # replaced with it.
  run sh "$LDM_TESTS/expect_error.sh" 2 "images are 3 x 8 x 8 [(]C x H x W[)], but the autoencoder" -- \
    $LDM_MPIRUN -np 2 "$LDM" encode $ae --data "$common/small.h5" --out out.h5
  [ -e out.h5 ] || [ -e out.h5.partial ] && fail "a failed run left a file"
  cp "$common/existing.h5" existing.h5
  run sh "$LDM_TESTS/expect_error.sh" 2 "existing[.]h5: the output exists [(]use --force to overwrite it[)]" -- \
    $LDM_MPIRUN -np 2 "$LDM" encode $ae --data "$common/images.h5" --out existing.h5
  cmp -s existing.h5 "$common/existing.h5" || fail "the existing output was changed"
  run $LDM_MPIRUN -np 2 "$LDM" encode $ae --data "$common/images.h5" --out existing.h5 --force >/dev/null
  compare existing.h5 "$common/latents.h5"
  cp "$common/existing.png" existing.png
  run $LDM_MPIRUN -np 2 "$LDM" decode $ae --data "$common/latents.h5" --out existing.png --force >/dev/null
  cmp -s existing.png "$common/existing.png" && fail "--force did not replace the PNG"
  ls -a | grep -q partial && fail "a partial file was left"
  ;;
*)
  fail "unknown scenario $scenario"
  ;;
esac
echo "ok: $scenario"
