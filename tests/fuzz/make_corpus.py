#!/usr/bin/env python3
"""Makes the seed corpora of tests/fuzz/corpus/ from real files: what ldm writes
(a tiny run's state.json and manifest.json, a student's consistency record, data
set files of each kind, configs/), small safetensors and PNG files of each kind,
and a few images of Debian's Fashion-MNIST test split. Each seed stays small
(a few KiB) so that the fuzzers mutate structure, not bulk.

Usage: make_corpus.py LDM WORK   (LDM: an ldm binary; WORK: a scratch folder)
The files are written into tests/fuzz/corpus/TARGET/ beside this script; the
regression inputs of crashes found (crash-*) are kept there too and never
overwritten."""
import gzip, io, json, os, struct, subprocess, sys, zlib

here = os.path.dirname(os.path.abspath(__file__))
repo = os.path.dirname(os.path.dirname(here))
ldm, work = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
os.makedirs(work, exist_ok=True)


def seed(target, name, data):
    folder = os.path.join(here, "corpus", target)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def run(*args):
    subprocess.run([ldm, *args], cwd=work, check=True, stdout=subprocess.DEVNULL)


# safetensors: one file per dtype family, with and without metadata, a scalar.
def safetensors(tensors, metadata=None):
    header, blobs, offset = {}, b"", 0
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        blobs += raw
        offset += len(raw)
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - (8 + len(text)) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + blobs


seed("safetensors", "f32", safetensors([("w", "F32", [2, 3], struct.pack("<6f", *range(6)))]))
seed("safetensors", "mixed", safetensors([("a.weight", "F16", [2], b"\x00\x3c\x00\xc0"),
                                          ("b", "BF16", [1, 2], b"\x80\x3f\x00\x40"),
                                          ("c", "I64", [], struct.pack("<q", 7)),
                                          ("d", "U8", [0], b"")]))
seed("safetensors", "optimizer", safetensors([("exp_avg.w", "F32", [2], b"\0" * 8),
                                              ("exp_avg_sq.w", "F32", [2], b"\0" * 8)], {"step": "12"}))

# configs: the shipped ones, one with overrides after a NUL byte.
for name in ("tiny.json", "ae-tiny.json", "cd-fmnist.json"):
    seed("config", name, open(os.path.join(repo, "configs", name), "rb").read())
seed("config", "tiny-with-overrides", open(os.path.join(repo, "configs", "tiny.json"), "rb").read() +
     b"\0train.steps=5\ndistill.guidance=2\ndevice.type=cpu\n")

# A tiny run, a student of it, and data set files of each kind.
run("prepare", "synthetic", "--n", "16", "--size", "8", "--classes", "4", "--channels", "4", "--latents", "float32",
    "--out", "lat.h5", "--force")
run("prepare", "synthetic", "--n", "4", "--size", "4", "--classes", "2", "--channels", "1", "--out", "img.h5", "--force")
run("prepare", "synthetic", "--n", "2", "--size", "4", "--classes", "2", "--channels", "2", "--latents", "float16",
    "--out", "half.h5", "--force")
tiny = ["--config", os.path.join(repo, "configs", "tiny.json"), "--set", "device.type=cpu", "--data", "lat.h5",
        "--set", "train.steps=2", "--set", "train.ckpt_every=2", "--force"]
run("train", *tiny, "--run", "teacher")
run("distill", "--teacher", "teacher", *tiny, "--run", "student")
step = os.path.join(work, "teacher", "checkpoints", "step-00000002")
seed("state", "dit-state.json", open(os.path.join(step, "state.json"), "rb").read())
student = json.load(open(os.path.join(work, "student", "checkpoints", "step-00000002", "state.json")))
seed("state", "student-state.json", json.dumps(student, indent=2))
seed("state", "consistency-record.json", json.dumps(student["consistency"], indent=2))
seed("manifest", "real-manifest.json", open(os.path.join(step, "manifest.json"), "rb").read())
# The manifest of the fixed files tests/fuzz/fuzz_manifest.c makes, so that a seed passes.
fixed = bytearray(8 + 56 + 8)
header = b'{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'
fixed[0] = len(header)
fixed[8:8 + len(header)] = header
fixed = bytes(fixed[:8 + len(header) + 8])
files = {name: {"bytes": len(fixed), "crc32": "%08x" % zlib.crc32(fixed)}
         for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors")}
files["state.json"] = {"bytes": 3, "crc32": "%08x" % zlib.crc32(b"{}\n")}
seed("manifest", "fixed-manifest.json",
     json.dumps({"format": "ldm-checkpoint", "version": 1, "step": 2, "files": files}, indent=2) + "\n")
for name in ("img.h5", "half.h5"):
    seed("dataset", name, open(os.path.join(work, name), "rb").read())

# Images: PNG gray, gray + alpha, RGB, RGBA, palette, 16-bit gray; JPEG below.
from PIL import Image
def png(image, **options):
    out = io.BytesIO()
    image.save(out, format="PNG", **options)
    return out.getvalue()
gradient = [(x * 40 + y * 9) % 256 for y in range(5) for x in range(6)]
gray = Image.new("L", (6, 5)); gray.putdata(gradient)
seed("png", "gray.png", png(gray))
seed("png", "gray-alpha.png", png(Image.merge("LA", (gray, gray.transpose(Image.FLIP_LEFT_RIGHT)))))
rgb = Image.merge("RGB", (gray, gray.transpose(Image.FLIP_TOP_BOTTOM), gray.transpose(Image.ROTATE_180)))
seed("png", "rgb.png", png(rgb))
seed("png", "rgba.png", png(rgb.convert("RGBA")))
seed("png", "palette.png", png(rgb.convert("P")))
seed("png", "gray16.png", png(gray.convert("I;16")))
# JPEG through the same decoder (the target reads either, by signature): RGB, gray, CMYK.
def jpeg(image):
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=80)
    return out.getvalue()
seed("png", "rgb.jpg", jpeg(rgb))
seed("png", "gray.jpg", jpeg(gray))
seed("png", "cmyk.jpg", jpeg(rgb.convert("CMYK")))

# idx: the first 3 images and labels of Debian's Fashion-MNIST test split, as
# the fuzz target splits its input (4-byte length of the images file first),
# plain and gzip-compressed.
fmnist = "/usr/share/datasets/fashion-mnist"
images = gzip.open(os.path.join(fmnist, "t10k-images-idx3-ubyte.gz")).read()
labels = gzip.open(os.path.join(fmnist, "t10k-labels-idx1-ubyte.gz")).read()
images3 = struct.pack(">IIII", 2051, 3, 28, 28) + images[16:16 + 3 * 784]
labels3 = struct.pack(">II", 2049, 3) + labels[8:11]
for name, a, b in (("plain", images3, labels3), ("gzip", gzip.compress(images3, mtime=0), gzip.compress(labels3, mtime=0))):
    seed("idx", name, struct.pack("<I", len(a)) + a + b)
print("corpus written to", os.path.join(here, "corpus"))
