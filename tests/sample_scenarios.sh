#!/bin/sh
# Command-line scenarios of `ldm sample`. Usage: sample_scenarios.sh SCENARIO WORK COMMON
# with the environment: LDM (the program), LDM_MPIRUN (mpirun with its options),
# LDM_PYTHON (python3 with h5py and numpy), LDM_TESTS (this folder), LDM_CONFIGS (configs/).
# WORK is this scenario's own folder, emptied first; COMMON holds what setup made:
# a tiny DiT trained on 4-channel pixels (pix4), one on 3-channel pixels (pix3),
# one on gray pixels (pix1),
# one on latents (lat), an autoencoder run (ae), the latents it makes
# (ae_latents.h5) and a DiT trained on them (latae).
set -u
scenario=$1; work=$2; common=$3
[ "$scenario" = setup ] && work=$common
rm -rf "$work" && mkdir -p "$work" || exit 1
cd "$work" || exit 1

fail() { echo "FAIL: $*" >&2; exit 1; }
run() { echo "+ $*" >&2; "$@" || fail "exit status $? from: $*"; }
synthetic() { run "$LDM" prepare synthetic --classes 4 "$@" >/dev/null; }
tiny="--config $LDM_CONFIGS/tiny.json --set train.steps=3 --set train.ckpt_every=3"
same() { cmp -s "$1" "$2" || run "$LDM_PYTHON" - "$1" "$2" <<'PY'
import sys, h5py, numpy as np
a, b = (h5py.File(p, "r") for p in sys.argv[1:3])
for k in ("images", "labels"):
    assert np.array_equal(a[k][...], b[k][...]), f"{k} differ between {sys.argv[1]} and {sys.argv[2]}"
PY
}

case "$scenario" in
setup)
  synthetic --n 32 --size 8 --channels 4 --out pix4.h5
  synthetic --n 32 --size 8 --channels 3 --out pix3.h5
  synthetic --n 32 --size 8 --channels 1 --out pix1.h5
  synthetic --n 8 --size 8 --channels 4 --latents float32 --out lat.h5
  synthetic --n 8 --size 16 --channels 3 --out ae_images.h5
  run "$LDM" train --data pix4.h5 $tiny --run pix4 >/dev/null
  run "$LDM" train --data pix3.h5 $tiny --set model.in_channels=3 --run pix3 >/dev/null
  run "$LDM" train --data pix1.h5 $tiny --set model.in_channels=1 --run pix1 >/dev/null
  run "$LDM" train --data lat.h5 $tiny --run lat >/dev/null
  run "$LDM" train-ae --config "$LDM_CONFIGS/ae-tiny.json" --data ae_images.h5 --run ae --set train.steps=2 \
    --set train.ckpt_every=2 >/dev/null
  # A DiT on the autoencoder's latents (2 x 8 x 8 of 3 x 16 x 16 pictures).
  run "$LDM" encode --ae ae --data ae_images.h5 --out ae_latents.h5 >/dev/null
  run "$LDM" train --data ae_latents.h5 $tiny --set model.in_channels=2 --run latae >/dev/null
  touch existing.h5 existing.png existing.npz
  ;;
latents)
  # A latents model decoded by --ae, or by default by the autoencoder that made
  # its latents: the same pictures, on 1 and 3 ranks; churn changes them.
  run "$LDM" sample --model "$common/latae" --ae "$common/ae" --n 7 --batch 3 --out ae.h5 >/dev/null
  run $LDM_MPIRUN -np 3 "$LDM" sample --model "$common/latae" --n 7 --batch 3 --out default3.h5 >/dev/null
  same ae.h5 default3.h5
  run "$LDM" sample --model "$common/latae" --n 7 --batch 3 --churn 10 --out churn.h5 >/dev/null
  run "$LDM" sample --model "$common/latae" --n 7 --batch 3 --churn 10 --out churn2.h5 >/dev/null
  same churn.h5 churn2.h5
  run "$LDM_PYTHON" - <<'PY'
import h5py, numpy as np
a, c = (h5py.File(p, "r") for p in ("ae.h5", "churn.h5"))
assert a["images"].shape == (7, 16, 16, 3) and a["images"].dtype == np.uint8, a["images"]
assert list(a["labels"][...]) == [i % 10 for i in range(7)], a["labels"][...]
assert a["images"][...].std() > 1, "the pictures are flat"
assert not np.array_equal(a["images"][...], c["images"][...]), "churn changed nothing"
PY
  ;;
pictures)
  # ldm train writes RUN/samples/step-N.png every train.sample_every steps and at
  # the end, one row per class (8 per row), decoded for a latents model; a
  # latents model whose autoencoder is unknown trains without pictures.
  run "$LDM" prepare synthetic --classes 3 --n 12 --size 8 --channels 3 --out pix.h5 >/dev/null
  run "$LDM" train --data pix.h5 $tiny --set model.in_channels=3 --set model.num_classes=3 \
    --set train.steps=5 --set train.sample_every=2 --run pix >/dev/null
  run "$LDM" train --data "$common/ae_latents.h5" $tiny --set model.in_channels=2 --set train.sample_every=3 \
    --ae "$common/ae" --run lat >/dev/null
  run "$LDM" train --data "$common/lat.h5" $tiny --set train.sample_every=3 --run unknown > unknown.out
  grep -q "no pictures during training: the autoencoder of the latents (made by: none (synthetic)) is not there" unknown.out ||
    fail "no note that the pictures are off"
  [ ! -e unknown/samples ] || fail "pictures without an autoencoder"
  [ "$(ls pix/samples | tr '\n' ' ')" = "step-00000002.png step-00000004.png step-00000005.png " ] ||
    fail "pix/samples holds: $(ls pix/samples)"
  [ "$(ls lat/samples | tr '\n' ' ')" = "step-00000003.png " ] || fail "lat/samples holds: $(ls lat/samples)"
  run "$LDM_PYTHON" - <<'PY'
import json, struct
def size(path):
    with open(path, "rb") as f:
        head = f.read(26)
    return struct.unpack(">II", head[16:24]) + (head[25],)
assert size("pix/samples/step-00000004.png") == (8 * 8, 3 * 8, 2), size("pix/samples/step-00000004.png")
assert size("lat/samples/step-00000003.png") == (8 * 16, 10 * 16, 2), size("lat/samples/step-00000003.png")
steps = {r["step"]: r for r in map(json.loads, open("pix/metrics.jsonl"))}
assert steps[2]["samples"] == "samples/step-00000002.png" and "samples" not in steps[3], steps[3]
PY
  ;;
ranks)
  # 1 rank and 3 ranks (uneven shards), guided and not, Heun and Euler: the same files.
  for args in "--cfg 1" "--cfg 2.5" "--cfg 1.5 --sampler euler --steps 5"; do
    rm -f one.h5 three.h5
    run "$LDM" sample --model "$common/pix4" --n 10 --batch 4 $args --out one.h5 >/dev/null
    run $LDM_MPIRUN -np 3 "$LDM" sample --model "$common/pix4" --n 10 --batch 4 $args --out three.h5 >/dev/null
    same one.h5 three.h5
  done
  run "$LDM_PYTHON" - <<'PY'
import h5py, numpy as np
f = h5py.File("one.h5", "r")
assert f["images"].shape == (10, 8, 8, 4) and f["images"].dtype == np.uint8, f["images"]
assert list(f["labels"][...]) == [i % 10 for i in range(10)], f["labels"][...]
assert f["images"][...].std() > 10, "the samples are flat"
PY
  ;;
seed)
  # The same seed: the same file; another seed: other images; --class K labels every sample K.
  run "$LDM" sample --model "$common/pix4" --n 6 --seed 3 --class 2 --out a.h5 >/dev/null
  run "$LDM" sample --model "$common/pix4/checkpoints/step-00000003" --n 6 --seed 3 --class 2 --out b.h5 >/dev/null
  run "$LDM" sample --model "$common/pix4" --n 6 --seed 4 --class 2 --out c.h5 >/dev/null
  run "$LDM" sample --model "$common/pix4" --n 6 --seed 3 --class 2 --weights model --out d.h5 >/dev/null
  same a.h5 b.h5
  run "$LDM_PYTHON" - <<'PY'
import h5py, numpy as np
a, c = (h5py.File(p, "r") for p in ("a.h5", "c.h5"))
assert list(a["labels"][...]) == [2] * 6
assert not np.array_equal(a["images"][...], c["images"][...]), "another seed gave the same images"
PY
  ;;
png)
  # --class all: one row per class (10 classes in the tiny config), columns ceil(N / 10).
  run $LDM_MPIRUN -np 2 "$LDM" sample --model "$common/pix3" --n 25 --out all.png >/dev/null
  run "$LDM" sample --model "$common/pix3" --n 5 --class 1 --steps 4 --out one.png >/dev/null
  run "$LDM" sample --model "$common/pix4" --n 3 --class 0 --steps 4 --out four.png >/dev/null
  run "$LDM_PYTHON" - <<'PY'
import struct
def size(path):
    with open(path, "rb") as f:
        head = f.read(26)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", path
    w, h = struct.unpack(">II", head[16:24])
    return w, h, head[25]
assert size("all.png") == (3 * 8, 10 * 8, 2), size("all.png")  # RGB
assert size("one.png") == (5 * 8, 8, 2), size("one.png")
assert size("four.png") == (3 * 8, 8, 2), size("four.png")  # 4 channels: the first 3 as RGB
PY
  ;;
npz)
  # The .npz of a sampling holds the .h5's images (gray repeated to RGB) and
  # labels, as numpy reads them: stored zip entries with good CRCs, arr_0
  # (N, H, W, 3) uint8 and arr_1 (N) int64; 3 ranks write the same bytes.
  for model in pix3 pix1; do
    run "$LDM" sample --model "$common/$model" --n 7 --batch 3 --out $model.h5 >/dev/null
    run "$LDM" sample --model "$common/$model" --n 7 --batch 3 --out $model.npz >/dev/null
  done
  run $LDM_MPIRUN -np 3 "$LDM" sample --model "$common/pix3" --n 7 --batch 3 --out pix3_ranks3.npz >/dev/null
  cmp pix3.npz pix3_ranks3.npz || fail "pix3.npz and pix3_ranks3.npz differ"
  run "$LDM_PYTHON" - <<'PY'
import zipfile
import h5py, numpy as np
for model in ("pix3", "pix1"):
    with zipfile.ZipFile(f"{model}.npz") as z:
        assert z.namelist() == ["arr_0.npy", "arr_1.npy"], z.namelist()
        assert all(i.compress_type == zipfile.ZIP_STORED for i in z.infolist()), "compressed entries"
        assert z.testzip() is None, "a CRC does not match"
    with open(f"{model}.npz", "rb") as f:  # zipfile reads the central directory's CRC; the local one too
        data = f.read()
    for i in z.infolist():
        local = data[i.header_offset: i.header_offset + 30]
        assert local[:4] == b"PK\x03\x04" and local[14:18] == i.CRC.to_bytes(4, "little"), f"{i.filename}: local header"
    npz, h5 = np.load(f"{model}.npz"), h5py.File(f"{model}.h5", "r")
    images, labels = h5["images"][...], h5["labels"][...]
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    assert npz["arr_0"].dtype == np.uint8 and npz["arr_0"].shape == (7, 8, 8, 3), (npz["arr_0"].dtype, npz["arr_0"].shape)
    assert npz["arr_1"].dtype == np.int64 and npz["arr_1"].shape == (7,), (npz["arr_1"].dtype, npz["arr_1"].shape)
    assert np.array_equal(npz["arr_0"], images), f"{model}.npz: arr_0 is not the .h5's images"
    assert np.array_equal(npz["arr_1"], labels), f"{model}.npz: arr_1 {npz['arr_1']} is not the .h5's labels {labels}"
    assert images.std() > 1, f"{model}: the samples are flat"
print("npz: arr_0 and arr_1 equal the .h5's images and labels")
PY
  ;;
*)
  fail "unknown scenario $scenario"
  ;;
esac
echo "scenario $scenario: ok"
