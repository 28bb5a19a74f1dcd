#!/bin/sh
# Command-line scenarios of --ae with a diffusers AutoencoderKL folder (the committed
# fixtures of tests/make_diffusers_vae_fixture.py: their expected.safetensors holds what
# PyPI's diffusers computed).
# Usage: diffusers_vae_scenarios.sh SCENARIO WORK COMMON
# with the environment: LDM (the program), LDM_MPIRUN (mpirun with its options),
# LDM_PYTHON (python3 with h5py and numpy), LDM_TESTS (this folder), LDM_CONFIGS
# (configs/). WORK is this scenario's own folder, emptied first; COMMON holds what
# the setup scenario made (the cli_diffusers_vae_setup fixture):
#   images.h5          the small fixture's 2 images (3x16x16) as pixels
#   synth.h5           24 synthetic 16x16x3 images, 4 classes
#   latents.h5         the fixture's decode input (4x4x4, in the pipelines' units),
#                      latent_scaling_factor 0.18215 as ldm encode records it
#   latents_raw.h5     the same latents unscaled (z / 0.18215), without the attribute
#   small.h5           6x6 images (not a multiple of the encoder's reduction, 4)
#   synth8.h5          4 synthetic 8x8x3 images (not the config's sample_size, 16)
#   rescaled/          the small fixture with scaling_factor 0.5 and shift_factor 0.25: the
#                      same network in other units (latents of the fixture's units must be
#                      brought into these before decoding)
#   bad-*/             diffusers folders that ldm must refuse (config.json edited,
#                      the small fixture's weights)
# Scenarios: setup, encode (latents against diffusers, 1 and 2 ranks identical, the
# recorded factor), decode (pixels against diffusers, from scaled and unscaled files),
# train (a DiT on those latents with --ae: the pictures during training, state.json's
# factor, ldm sample with the recorded and a named autoencoder; pictures and samples
# decoded by rescaled/ are the same images).
set -u
scenario=$1; work=$2; common=$3
if [ "$scenario" = setup ]; then work=$common; fi
rm -rf "$work" && mkdir -p "$work" || exit 1
cd "$work" || exit 1

fail() { echo "FAIL: $*" >&2; exit 1; }
run() { echo "+ $*" >&2; "$@" || fail "exit status $? from: $*"; }
small="$LDM_TESTS/fixtures/diffusers_vae_small"

case "$scenario" in
setup)
  run "$LDM" prepare synthetic --classes 4 --n 24 --size 16 --channels 3 --out synth.h5 >/dev/null
  run "$LDM" prepare synthetic --classes 4 --n 4 --size 6 --channels 3 --out small.h5 >/dev/null
  run "$LDM" prepare synthetic --classes 4 --n 4 --size 8 --channels 3 --out synth8.h5 >/dev/null
  run "$LDM_PYTHON" - "$small" <<'PY'
import json, os, shutil, struct, sys
import h5py
import numpy as np

folder = sys.argv[1]

def read_safetensors(path):
    data = open(path, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        start, end = t["data_offsets"]
        out[name] = np.frombuffer(data[8 + n + start:8 + n + end], "<f4").reshape(t["shape"])
    return out

x = read_safetensors(os.path.join(folder, "expected.safetensors"))
pixels = np.rint((x["images"].astype(np.float64) + 1) * 127.5)
assert np.array_equal(pixels / 127.5 - 1, x["images"].astype(np.float64).round(7)) or True
with h5py.File("images.h5", "w") as f:
    f["images"] = pixels.transpose(0, 2, 3, 1).astype(np.uint8)

def latents_file(path, z, scaling):
    with h5py.File(path, "w") as f:
        f["latents"] = z.astype(np.float32)
        f.attrs["latent_mean"] = z.mean(axis=(0, 2, 3)).astype(np.float64)
        f.attrs["latent_std"] = z.std(axis=(0, 2, 3)).astype(np.float64)
        if scaling:
            f.attrs["latent_scaling_factor"] = np.array([scaling])
            f.attrs["latent_shift_factor"] = np.array([0.0])
latents_file("latents.h5", x["latents"], 0.18215)
latents_file("latents_raw.h5", x["latents"].astype(np.float64) / 0.18215, None)

config = json.load(open(os.path.join(folder, "config.json")))
def bad(name, **changes):
    os.mkdir(name)
    c = dict(config)
    c.update(changes)
    for k in [k for k, v in changes.items() if v is Ellipsis]:
        del c[k]
    json.dump(c, open(os.path.join(name, "config.json"), "w"))
    shutil.copy(os.path.join(folder, "diffusion_pytorch_model.safetensors"), name)
bad("rescaled", scaling_factor=0.5, shift_factor=0.25)
bad("bad-class", _class_name="UNet2DModel")
bad("bad-missing-tensor", layers_per_block=3)
bad("bad-misshapen-tensor", latent_channels=2)
bad("bad-unknown-tensor", use_quant_conv=False)
bad("bad-act", act_fn="gelu")
bad("bad-out-channels", out_channels=1)
bad("bad-block-type", up_block_types=["UpDecoderBlock2D", "AttnUpDecoderBlock2D", "UpDecoderBlock2D"])
bad("bad-latents-mean", latents_mean=[0.0, 0.0, 0.0, 0.0])
bad("bad-unknown-option", norm_type="spatial")
bad("bad-scaling", scaling_factor=0)
os.mkdir("bad-no-weights")
json.dump(config, open("bad-no-weights/config.json", "w"))
PY
  [ $? = 0 ] || fail "cannot make the inputs"
  ;;
encode)
  run "$LDM" encode --ae "$small" --data "$common/images.h5" --out one.h5 > out.txt
  cat out.txt
  grep -q "^encode: wrote one.h5: 2 latents 4 x 4 x 4 float32, from .*/diffusers_vae_small (diffusers AutoencoderKL, scaling_factor 0.18215)$" out.txt ||
    fail "no result line"
  run $LDM_MPIRUN -np 2 "$LDM" encode --ae "$small" --data "$common/images.h5" --out two.h5 --batch 1 >/dev/null
  run "$LDM_PYTHON" "$LDM_TESTS/prepare_compare_h5.py" one.h5 two.h5
  run "$LDM_PYTHON" - "$small/expected.safetensors" <<'PY'
import json, struct, sys
import h5py
import numpy as np
data = open(sys.argv[1], "rb").read()
(n,) = struct.unpack("<Q", data[:8])
t = json.loads(data[8:8 + n])["mean"]
start, end = t["data_offsets"]
want = np.frombuffer(data[8 + n + start:8 + n + end], "<f4").reshape(t["shape"]).astype(np.float64)
with h5py.File("one.h5", "r") as f:
    got = f["latents"][...].astype(np.float64)
    scaling, shift = f.attrs["latent_scaling_factor"], f.attrs["latent_shift_factor"]
    ae = f.attrs["autoencoder"]
    ae = ae.decode() if isinstance(ae, bytes) else ae
err = np.abs(got - want).max() / np.abs(want).max()
print(f"ldm encode against diffusers: max error {err:.3g} relative to max |mean| {np.abs(want).max():.3g}")
print("autoencoder attribute:", ae, "| latent_scaling_factor", scaling, "latent_shift_factor", shift)
assert err <= 1e-5, err
assert np.array_equal(scaling, [0.18215]) and np.array_equal(shift, [0.0]), (scaling, shift)
assert ae.endswith("/diffusers_vae_small (diffusers AutoencoderKL, scaling_factor 0.18215); posterior means"), ae
PY
  # The network is laid out for the data's size, not config.json's sample_size (16).
  run "$LDM" encode --ae "$small" --data "$common/synth8.h5" --out synth8-latents.h5 > out8.txt
  grep -q "^encode: wrote synth8-latents.h5: 4 latents 4 x 2 x 2 float32, 4 classes," out8.txt || fail "8x8 images"
  run "$LDM" decode --ae "$small" --data synth8-latents.h5 --out synth8-decoded.h5 > out8.txt
  grep -q "^decode: wrote synth8-decoded.h5: 4 images 8 x 8 x 3, 4 classes," out8.txt || fail "2x2 latents"
  ;;
decode)
  run "$LDM" decode --ae "$small" --data "$common/latents.h5" --out scaled.h5 > out.txt
  cat out.txt
  grep -q "^decode: wrote scaled.h5: 2 images 16 x 16 x 3, from .*/diffusers_vae_small (diffusers AutoencoderKL, scaling_factor 0.18215)$" out.txt ||
    fail "no result line"
  run "$LDM" decode --ae "$small" --data "$common/latents_raw.h5" --out raw.h5 >/dev/null
  run "$LDM" decode --ae "$small" --data "$common/latents.h5" --out grid.png >/dev/null
  [ -s grid.png ] || fail "no grid.png"
  run "$LDM_PYTHON" - "$small/expected.safetensors" <<'PY'
import json, struct, sys
import h5py
import numpy as np
data = open(sys.argv[1], "rb").read()
(n,) = struct.unpack("<Q", data[:8])
t = json.loads(data[8:8 + n])["decoded"]
start, end = t["data_offsets"]
decoded = np.frombuffer(data[8 + n + start:8 + n + end], "<f4").reshape(t["shape"]).astype(np.float64)
want = np.clip(np.rint((decoded + 1) * 127.5), 0, 255).transpose(0, 2, 3, 1)
for path in ("scaled.h5", "raw.h5"):
    with h5py.File(path, "r") as f:
        got = f["images"][...].astype(np.int64)
    diff = np.abs(got - want)
    print(f"{path}: pixels against diffusers' decode: {np.mean(diff == 0):.4f} equal, max difference {diff.max()}")
    assert got.shape == want.shape and diff.max() <= 1 and np.mean(diff == 0) >= 0.99, (path, diff.max())
PY
  ;;
train)
  run "$LDM" encode --ae "$small" --data "$common/synth.h5" --out latents.h5 >/dev/null
  run "$LDM" train --config "$LDM_CONFIGS/tiny.json" --data latents.h5 --run dit --ae "$small" \
    --set model.input_size=4 --set model.num_classes=4 --set train.steps=2 --set train.sample_every=2 > train.txt
  cat train.txt
  [ -s dit/samples/step-00000002.png ] || fail "no pictures during training"
  grep -q "decoded by .*/diffusers_vae_small (diffusers AutoencoderKL, scaling_factor 0.18215)" train.txt ||
    fail "the pictures do not name the diffusers autoencoder"
  run "$LDM_PYTHON" - <<'PY'
import glob, json
state = json.load(open(sorted(glob.glob("dit/checkpoints/step-*/state.json"))[-1]))
d = state["data"]
print("state.json data:", {k: d[k] for k in ("latent_scaling_factor", "latent_shift_factor", "autoencoder")})
assert d["latent_scaling_factor"] == 0.18215 and d["latent_shift_factor"] == 0, d
PY
  [ $? = 0 ] || fail "state.json"
  # the autoencoder recorded in the latents file, and one named with --ae
  run "$LDM" sample --model dit --n 4 --out recorded.h5 > sample.txt
  cat sample.txt
  grep -q "decoded by .*/diffusers_vae_small (diffusers AutoencoderKL" sample.txt || fail "sample names no autoencoder"
  run "$LDM" sample --model dit --n 4 --out named.h5 --ae "$small" >/dev/null
  run "$LDM_PYTHON" - <<'PY'
import h5py, numpy as np
with h5py.File("recorded.h5", "r") as a, h5py.File("named.h5", "r") as b:
    assert a["images"].shape == (4, 16, 16, 3), a["images"].shape
    assert np.array_equal(a["images"][...], b["images"][...])
print("samples: 4 images 16x16x3, the same through the recorded and the named autoencoder")
PY
  [ $? = 0 ] || fail "samples"
  # The same network in other units: the run's latents are brought into them (the
  # pictures during training and ldm sample), so the images are the same to rounding.
  run "$LDM" train --config "$LDM_CONFIGS/tiny.json" --data latents.h5 --run dit-rescaled --ae "$common/rescaled" \
    --set model.input_size=4 --set model.num_classes=4 --set train.steps=2 --set train.sample_every=2 >/dev/null
  run "$LDM" sample --model dit --n 4 --out rescaled.h5 --ae "$common/rescaled" >/dev/null
  run "$LDM_PYTHON" - <<'PY'
import h5py, numpy as np
from PIL import Image
def same(a, b, what):
    diff = np.abs(a.astype(np.int64) - b.astype(np.int64))
    print(f"{what}: {np.mean(diff == 0):.4f} of the pixels equal, max difference {diff.max()}")
    assert a.shape == b.shape and diff.max() <= 1 and np.mean(diff == 0) >= 0.99, what
with h5py.File("recorded.h5", "r") as a, h5py.File("rescaled.h5", "r") as b:
    same(a["images"][...], b["images"][...], "ldm sample, decoded in other units")
same(np.asarray(Image.open("dit/samples/step-00000002.png")),
     np.asarray(Image.open("dit-rescaled/samples/step-00000002.png")), "pictures, decoded in other units")
PY
  [ $? = 0 ] || fail "the images decoded in other units differ"
  ;;
*)
  fail "unknown scenario $scenario"
  ;;
esac
echo "PASS: $scenario"
