#!/usr/bin/env python3
"""Makes the inputs of the `ldm prepare` tests in a folder (standard library only):

  pngs/          an ImageFolder tree: classes ant/ and zebra/ (created zebra first),
                 PNGs of different sizes and kinds (RGB, gray, RGBA, gray+alpha,
                 16-bit, palette, a solid colour, an upper-case .PNG, a nested
                 folder), plus files that must be ignored (a .txt, a hidden folder,
                 an empty folder)
  pngs-flat/     PNGs directly in the folder (no labels)
  pngs-corrupt/  a tree in which one PNG is truncated
  pngs-stray/    class folders and a PNG directly in the top folder
  empty-dir/     no PNG at all (a text file and an empty subfolder)
  fmnist-*/      small idx gzip pairs: truncated, corrupt, bad magic, counts that
                 disagree (and a good one)

usage: prepare_make_inputs.py FOLDER
"""
import gzip
import os
import random
import shutil
import struct
import sys
import zlib


def png_bytes(width, height, color_type, bit_depth, rows, palette=None):
    """A PNG file: rows is a list of bytes objects, one per scanline without filter byte."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"".join(b"\x00" + row for row in rows)
    out = b"\x89PNG\r\n\x1a\n"
    out += chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0))
    if palette is not None:
        out += chunk(b"PLTE", b"".join(bytes(c) for c in palette))
    out += chunk(b"IDAT", zlib.compress(raw))
    out += chunk(b"IEND", b"")
    return out


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def rgb(width, height):
    return png_bytes(width, height, 2, 8, [b"".join(bytes(((x * 7 + y * 3) % 256, (x * y) % 256, (255 - x * 5) % 256))
                                                    for x in range(width)) for y in range(height)])


def gray(width, height):
    return png_bytes(width, height, 0, 8, [bytes((x * 11 + y * 17) % 256 for x in range(width)) for y in range(height)])


def rgba(width, height):
    rows = []
    for y in range(height):
        row = bytearray()
        for x in range(width):
            row += bytes(((x * 5) % 256, (y * 5) % 256, 128, (x * 255) // max(width - 1, 1)))
        rows.append(bytes(row))
    return png_bytes(width, height, 6, 8, rows)


def gray_alpha(width, height):
    return png_bytes(width, height, 4, 8, [b"".join(bytes(((x * 30) % 256, 255 if y % 2 else 0)) for x in range(width))
                                           for y in range(height)])


def rgb16(width, height):
    return png_bytes(width, height, 2, 16, [b"".join(struct.pack(">HHH", x * 3000, y * 3000, 65535 - x * y * 100)
                                                     for x in range(width)) for y in range(height)])


def paletted(width, height):
    palette = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (250, 250, 250)]
    return png_bytes(width, height, 3, 8, [bytes((x + y) % 4 for x in range(width)) for y in range(height)], palette)


def solid(width, height, colour):
    return png_bytes(width, height, 2, 8, [bytes(colour) * width for _ in range(height)])


def idx_gz(magic, dims, payload, level=6):
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims)
    return gzip.compress(header + payload, compresslevel=level, mtime=0)


def make_fmnist(folder, name, images_magic=2051, labels_magic=2049, image_count=100, label_count=100,
                damage=None, claimed_count=None):
    """claimed_count: the count both headers give, when they lie about the items that follow."""
    rng = random.Random(1)
    pixels = bytes(rng.randrange(256) for _ in range(image_count * 28 * 28))
    labels = bytes(rng.randrange(10) for _ in range(label_count))
    images_gz = idx_gz(images_magic, (claimed_count or image_count, 28, 28), pixels)
    labels_gz = idx_gz(labels_magic, (claimed_count or label_count,), labels)
    if damage == "truncate":
        images_gz = images_gz[: len(images_gz) // 2]
    elif damage == "corrupt":
        middle = len(images_gz) // 2
        images_gz = images_gz[:middle] + bytes(b ^ 0x5A for b in images_gz[middle:middle + 64]) + \
            images_gz[middle + 64:]
    write(os.path.join(folder, name, "t10k-images-idx3-ubyte.gz"), images_gz)
    write(os.path.join(folder, name, "t10k-labels-idx1-ubyte.gz"), labels_gz)


def main():
    folder = sys.argv[1]
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)

    tree = os.path.join(folder, "pngs")
    write(os.path.join(tree, "zebra", "b_rgb.png"), rgb(40, 30))
    write(os.path.join(tree, "zebra", "a_gray.png"), gray(17, 23))
    write(os.path.join(tree, "zebra", "nested", "c_rgba.PNG"), rgba(50, 50))
    write(os.path.join(tree, "zebra", "notes.txt"), b"not an image\n")
    write(os.path.join(tree, "ant", "solid.png"), solid(20, 12, (200, 100, 50)))
    write(os.path.join(tree, "ant", "deep16.png"), rgb16(20, 20))
    write(os.path.join(tree, "ant", "pal.png"), paletted(12, 16))
    write(os.path.join(tree, "ant", "ga.png"), gray_alpha(9, 9))
    write(os.path.join(tree, ".hidden", "skipped.png"), gray(4, 4))
    os.makedirs(os.path.join(tree, "empty"))

    flat = os.path.join(folder, "pngs-flat")
    write(os.path.join(flat, "one.png"), rgb(8, 8))
    write(os.path.join(flat, "two.png"), gray(5, 9))

    corrupt = os.path.join(folder, "pngs-corrupt")
    write(os.path.join(corrupt, "a", "good.png"), rgb(16, 16))
    # Eight more before the damaged file, so that under 3 ranks it is rank 1's
    # (ldm prepare images gives each rank 8 files a step).
    for i in range(8):
        write(os.path.join(corrupt, "a", f"good{i}.png"), rgb(8 + i, 8))
    write(os.path.join(corrupt, "b", "good.png"), gray(16, 16))
    whole = rgb(64, 64)
    write(os.path.join(corrupt, "b", "truncated.png"), whole[: len(whole) * 2 // 3])
    write(os.path.join(corrupt, "c", "good.png"), gray(16, 16))

    stray = os.path.join(folder, "pngs-stray")
    write(os.path.join(stray, "class", "fine.png"), gray(4, 4))
    write(os.path.join(stray, "stray.png"), gray(4, 4))

    empty = os.path.join(folder, "empty-dir")
    write(os.path.join(empty, "readme.txt"), b"no images here\n")
    os.makedirs(os.path.join(empty, "sub"))

    make_fmnist(folder, "fmnist-good")
    make_fmnist(folder, "fmnist-truncated", damage="truncate")
    make_fmnist(folder, "fmnist-corrupt", damage="corrupt")
    make_fmnist(folder, "fmnist-bad-magic", images_magic=2049)
    make_fmnist(folder, "fmnist-count-mismatch", label_count=99)
    # Headers that name 9 M images (7 GB of pixels) in front of 100: refused as
    # truncated without asking for the 7 GB first.
    make_fmnist(folder, "fmnist-count-lies", claimed_count=9_000_000)


if __name__ == "__main__":
    main()
