#!/usr/bin/env python3
"""The JPEG/PNG decoding and ADM center crop of `ldm prepare images` against PIL.

  make DIR            writes a folder of test images with PIL (and a few PNGs by hand):
                      JPEGs (RGB 4:4:4 and 4:2:0, progressive, gray, CMYK, an upper-case
                      .JPEG) and PNGs (RGB, RGBA, gray + alpha, palette with and without
                      transparency, 1-bit, 16-bit gray and RGB), of many sizes and aspect
                      ratios (smaller than S, exactly S, 2S - 1, 2S, several halvings,
                      wide, tall), in two class folders; plus DIR-bad/, the same tree with
                      files named bad_* that no decoder can read (a truncated JPEG, a
                      truncated PNG, a PNG with a damaged IDAT, text named .jpg).
  check DIR OUT.h5 S C
                      every row of OUT.h5 against PIL doing DiT's steps on the same file:
                      Image.open(f).convert("RGB" or "L"), then center_crop_arr (ADM),
                      16-bit PNGs reduced to their high byte first (PIL clips 16-bit gray).
                      Passes when, per image, at least 99% of the values are within 1 level
                      (and reports how many are exact); also the labels (class folder of
                      each file, in strcmp path order) and class_names. Files named bad_*
                      are expected to be missing from OUT.h5 (--skip-bad).
  make-damaged DIR OUT_DIR
                      writes 6 damaged copies of every image of DIR (seeded: 2 cut short at
                      a random length, 4 with 1-7 random bytes overwritten) into OUT_DIR/x.
  check-damaged DIR OUT.h5 STDERR
                      `ldm prepare images DIR --skip-bad` kept exactly the files that PIL
                      decodes (the one difference allowed: a PNG whose IDAT chunk fails its
                      CRC, which PIL does not check and ldm refuses), each as PIL crops it
                      (within 1 level for 99% of values); STDERR holds its skip lines.
"""
import random
import re
import os
import struct
import sys
import zlib

import h5py
import numpy as np
from PIL import Image


def center_crop_arr(pil_image, image_size):
    """guided-diffusion's (and DiT's) center_crop_arr, verbatim."""
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image)
    crop_y = (arr.shape[0] - image_size) // 2
    crop_x = (arr.shape[1] - image_size) // 2
    return Image.fromarray(arr[crop_y: crop_y + image_size, crop_x: crop_x + image_size])


def picture(rng, width, height, channels):
    """Smooth gradients and shapes plus noise: something for the filters to blur and ring on."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    planes = []
    for c in range(channels):
        fx, fy = rng.uniform(0.02, 0.3, 2)
        plane = 128 + 90 * np.sin(fx * x + c) * np.cos(fy * y - c)
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(2, max(3, min(width, height) / 2))
        plane[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.uniform(0, 255)
        plane += rng.normal(0, 12, plane.shape)
        planes.append(plane)
    return np.clip(np.stack(planes, -1), 0, 255).round().astype(np.uint8)


def png_by_hand(path, array, bit_depth):
    """A PNG of a (H, W) or (H, W, 3) uint16 array at 16 bits (PIL writes no 16-bit RGB)."""
    height, width = array.shape[:2]
    color_type = 2 if array.ndim == 3 else 0
    raw = b"".join(b"\x00" + array[r].astype(">u2").tobytes() for r in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, color_type,
                                                                   0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def make(top):
    rng = np.random.default_rng(22)
    a, b = os.path.join(top, "n01_jpeg"), os.path.join(top, "n02_png")
    os.makedirs(a, exist_ok=True)
    os.makedirs(b, exist_ok=True)
    # Sizes around S = 16 and 24 (the tests' sizes): below S, S, 2S - 1, 2S, 4S + odd, wide, tall.
    sizes = [(300, 200), (257, 131), (64, 97), (16, 16), (47, 31), (48, 48), (101, 203), (400, 50), (40, 300),
             (5, 7), (700, 513), (33, 65)]
    for i, (w, h) in enumerate(sizes):
        rgb = Image.fromarray(picture(rng, w, h, 3))
        sub = (0, 1, 2)[i % 3]
        rgb.save(os.path.join(a, f"rgb_{i:02d}.jpg"), quality=90, subsampling=sub)
    Image.fromarray(picture(rng, 123, 77, 3)).save(os.path.join(a, "progressive.jpeg"), quality=85, progressive=True)
    Image.fromarray(picture(rng, 90, 61, 1)[:, :, 0]).save(os.path.join(a, "gray.jpg"), quality=92)
    Image.fromarray(picture(rng, 70, 110, 3)).convert("CMYK").save(os.path.join(a, "cmyk.jpg"), quality=95)
    Image.fromarray(picture(rng, 81, 59, 3)).save(os.path.join(a, "upper.JPEG"), quality=75)

    Image.fromarray(picture(rng, 77, 51, 3)).save(os.path.join(b, "rgb.png"))
    Image.fromarray(picture(rng, 60, 83, 4)).save(os.path.join(b, "rgba.png"))
    Image.fromarray(picture(rng, 35, 29, 2), "LA").save(os.path.join(b, "gray_alpha.png"))
    Image.fromarray(picture(rng, 50, 50, 1)[:, :, 0]).save(os.path.join(b, "gray.png"))
    palette = Image.fromarray(picture(rng, 66, 45, 3)).quantize(colors=37)
    palette.save(os.path.join(b, "palette.png"))
    palette.save(os.path.join(b, "palette_trns.png"), transparency=5)
    Image.fromarray(picture(rng, 41, 39, 1)[:, :, 0] > 128).save(os.path.join(b, "one_bit.png"))
    png_by_hand(os.path.join(b, "gray16.png"), picture(rng, 52, 37, 1)[:, :, 0].astype(np.uint16) * 257 + 3, 16)
    png_by_hand(os.path.join(b, "rgb16.png"), picture(rng, 38, 58, 3).astype(np.uint16) * 251 + 77, 16)
    Image.fromarray(picture(rng, 130, 70, 3)).save(os.path.join(b, "rgb_wide.png"))

    # The same tree with unreadable files beside the good ones.
    bad = top.rstrip("/") + "-bad"
    for folder in (a, b):
        target = os.path.join(bad, os.path.basename(folder))
        os.makedirs(target, exist_ok=True)
        for name in sorted(os.listdir(folder)):
            with open(os.path.join(folder, name), "rb") as f, open(os.path.join(target, name), "wb") as g:
                g.write(f.read())
    with open(os.path.join(a, "rgb_00.jpg"), "rb") as f:
        jpeg = f.read()
    with open(os.path.join(b, "rgb.png"), "rb") as f:
        png = f.read()
    with open(os.path.join(bad, "n01_jpeg", "bad_truncated.jpg"), "wb") as f:
        f.write(jpeg[: len(jpeg) // 2])
    with open(os.path.join(bad, "n02_png", "bad_truncated.png"), "wb") as f:
        f.write(png[: len(png) // 2])
    damaged = bytearray(png)
    idat = damaged.index(b"IDAT")
    damaged[idat + 40: idat + 60] = bytes(20)  # the deflate stream and the CRC broken
    with open(os.path.join(bad, "n02_png", "bad_damaged.png"), "wb") as f:
        f.write(bytes(damaged))
    with open(os.path.join(bad, "n02_png", "bad_text.jpg"), "w") as f:
        f.write("not an image\n")


def reference(path, size, channels):
    image = Image.open(path)
    if image.mode in ("I;16", "I;16B", "I"):  # 16-bit gray: its high byte (PIL would clip to 255)
        image = Image.fromarray((np.array(image).astype(np.uint32) >> 8).astype(np.uint8), "L")
    image = image.convert("RGB" if channels == 3 else "L")
    out = np.array(center_crop_arr(image, size))
    return out.reshape(size, size, channels)


def list_images(top):
    found = []
    for root, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [os.path.join(root, f) for f in files
                  if not f.startswith(".") and os.path.splitext(f)[1].lower() in (".png", ".jpg", ".jpeg")]
    return sorted(found, key=lambda p: p.encode())


def check(top, out, size, channels):
    top = top.rstrip("/")
    files = list_images(top)
    classes = sorted({os.path.relpath(p, top).split(os.sep)[0] for p in files}, key=lambda c: c.encode())
    good = [p for p in files if not os.path.basename(p).startswith("bad_")]
    failures = []
    with h5py.File(out, "r") as f:
        images = f["images"][...]
        labels = list(f["labels"][...])
        names = [x.decode() if isinstance(x, bytes) else str(x) for x in f.attrs["class_names"]]
    if images.shape != (len(good), size, size, channels):
        print(f"{out}: /images shape {images.shape}, expected {(len(good), size, size, channels)}", file=sys.stderr)
        return 1
    expected_labels = [classes.index(os.path.relpath(p, top).split(os.sep)[0]) for p in good]
    if labels != expected_labels:
        failures.append(f"labels {labels}, expected {expected_labels}")
    if names != classes:
        failures.append(f"class_names {names}, expected {classes}")
    exact = total = 0
    worst = 0
    for row, path in enumerate(good):
        want = reference(path, size, channels).astype(int)
        got = images[row].astype(int)
        difference = np.abs(want - got)
        within = (difference <= 1).mean()
        exact += int((difference == 0).sum())
        total += difference.size
        worst = max(worst, int(difference.max()))
        if within < 0.99:
            failures.append(f"row {row} ({os.path.relpath(path, top)}): {100 * within:.2f}% of values within 1 "
                            f"level of PIL's (at least 99% expected), largest difference {difference.max()}")
    for failure in failures:
        print(f"{out}: {failure}", file=sys.stderr)
    if failures:
        return 1
    print(f"{out}: {len(good)} images at {size}x{size}x{channels} match PIL's center_crop_arr: "
          f"{100 * exact / total:.3f}% of values exact, largest difference {worst}")
    return 0


def make_damaged(top, out):
    rng = random.Random(22)
    os.makedirs(os.path.join(out, "x"), exist_ok=True)
    n = 0
    for path in list_images(top):
        with open(path, "rb") as f:
            data = f.read()
        extension = os.path.splitext(path)[1]
        for k in range(6):
            damaged = bytearray(data)
            if k < 2:
                damaged = damaged[: rng.randrange(1, len(damaged))]
            else:
                for _ in range(rng.randrange(1, 8)):
                    damaged[rng.randrange(len(damaged))] = rng.randrange(256)
            with open(os.path.join(out, "x", f"{n:04d}{extension}"), "wb") as f:
                f.write(bytes(damaged))
            n += 1
    print(f"{out}: {n} damaged images")


def idat_crc_fails(path):
    """Whether a PNG has an IDAT chunk whose CRC does not match (PIL does not check those)."""
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return False
    at = 8
    while at + 12 <= len(data):
        length, kind = struct.unpack(">I4s", data[at: at + 8])
        body = data[at + 8: at + 8 + length]
        stored = data[at + 8 + length: at + 12 + length]
        if kind == b"IDAT" and len(stored) == 4 and zlib.crc32(kind + body) != struct.unpack(">I", stored)[0]:
            return True
        at += 12 + length
    return False


def check_damaged(top, out, stderr):
    files = list_images(top)
    with open(stderr) as f:
        skipped = {m.group(1) for m in (re.match(r"prepare images: skipped (.*?): ", line) for line in f) if m}
    kept = [p for p in files if p not in skipped]
    readable = {}
    for path in files:
        try:
            readable[path] = reference(path, 16, 3)
        except Exception:  # what PIL raises for a damaged file: OSError, SyntaxError, ValueError, ...
            pass
    failures = [f"{p}: kept by ldm, refused by PIL" for p in kept if p not in readable]
    failures += [f"{p}: decoded by PIL, skipped by ldm" for p in readable
                 if p in skipped and not idat_crc_fails(p)]
    with h5py.File(out, "r") as f:
        images = f["images"][...]
    if len(images) != len(kept):
        failures.append(f"{len(images)} rows for {len(kept)} kept files")
    else:
        for row, path in enumerate(kept):
            if path in readable and (np.abs(readable[path].astype(int) - images[row].astype(int)) <= 1).mean() < 0.99:
                failures.append(f"{path}: row {row} is not PIL's crop")
    for failure in failures:
        print(f"{out}: {failure}", file=sys.stderr)
    if failures:
        return 1
    print(f"{out}: of {len(files)} damaged files ldm kept the {len(kept)} PIL decodes, as PIL crops them")
    return 0


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "make":
        make(sys.argv[2])
        return 0
    if len(sys.argv) == 4 and sys.argv[1] == "make-damaged":
        make_damaged(sys.argv[2], sys.argv[3])
        return 0
    if len(sys.argv) == 5 and sys.argv[1] == "check-damaged":
        return check_damaged(sys.argv[2], sys.argv[3], sys.argv[4])
    if len(sys.argv) == 6 and sys.argv[1] == "check":
        return check(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
