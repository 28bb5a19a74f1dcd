#!/usr/bin/env python3
"""Checks an `ldm prepare fashion-mnist` output against the idx source, parsed
here independently of ldm: every pixel (with the centred zero padding when
--pad was given), every label, num_classes and class_names. Reading the file
with h5py also shows that it is readable as it is.

usage: prepare_check_fashion_mnist.py IDX_DIR SPLIT OUT.h5 [PAD]
"""
import gzip
import struct
import sys

import h5py
import numpy as np

CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot"]


def read_idx(path, magic, ndim):
    with gzip.open(path, "rb") as f:
        data = f.read()
    found_magic, = struct.unpack(">I", data[:4])
    assert found_magic == magic, f"{path}: magic {found_magic}"
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    payload = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    assert payload.size == int(np.prod(dims)), f"{path}: {payload.size} bytes for dims {dims}"
    return payload.reshape(dims)


def main():
    idx_dir, split, out = sys.argv[1:4]
    pad = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    prefix = {"train": "train", "test": "t10k"}[split]
    images = read_idx(f"{idx_dir}/{prefix}-images-idx3-ubyte.gz", 2051, 3)
    labels = read_idx(f"{idx_dir}/{prefix}-labels-idx1-ubyte.gz", 2049, 1)
    n = images.shape[0]
    if pad:
        top = (pad - 28) // 2
        expected = np.zeros((n, pad, pad), dtype=np.uint8)
        expected[:, top:top + 28, top:top + 28] = images
    else:
        expected = images
    expected = expected[..., np.newaxis]  # (N, H, W, 1)

    failures = []
    with h5py.File(out, "r") as f:
        stored = f["images"]
        if stored.dtype != np.uint8:
            failures.append(f"/images dtype {stored.dtype}, expected uint8")
        if stored.shape != expected.shape:
            failures.append(f"/images shape {stored.shape}, expected {expected.shape}")
        else:
            got = stored[...]
            differing = np.argwhere(got != expected)
            if len(differing):
                failures.append(f"{len(differing)} pixels differ, first at {tuple(differing[0])}: "
                                f"{got[tuple(differing[0])]} vs {expected[tuple(differing[0])]}")
        got_labels = f["labels"][...]
        if got_labels.dtype != np.int32:
            failures.append(f"/labels dtype {got_labels.dtype}, expected int32")
        if got_labels.shape != (n,) or not np.array_equal(got_labels, labels.astype(np.int32)):
            failures.append("/labels differ from the idx labels")
        if int(f.attrs["num_classes"]) != 10:
            failures.append(f"num_classes {f.attrs['num_classes']}, expected 10")
        names = [x.decode() if isinstance(x, bytes) else str(x) for x in f.attrs["class_names"]]
        if names != CLASS_NAMES:
            failures.append(f"class_names {names}")
    for failure in failures:
        print(f"{out}: {failure}", file=sys.stderr)
    if failures:
        return 1
    print(f"{out}: {n} images (pad {pad or 'none'}) and labels equal the idx files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
