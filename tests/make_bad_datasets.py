#!/usr/bin/env python3
"""Writes the data set files of the loader's bad-input tests (tests/data_tests.cmake)
into OUTDIR: one file per way a data set can be wrong for `ldm bench --config
configs/tiny.json` (a DiT on 4x8x8 latents with 10 classes). Written with h5py,
independently of ldm's own writer, in the format of data/dataset_file.h.
Usage: make_bad_datasets.py OUTDIR"""
import os
import sys

import h5py
import numpy as np


def latents_file(path, n=16, shape=(4, 8, 8), dtype=np.float32, labels=True, num_classes=10,
                 label_values=None):
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "ldm-dataset"
        f.attrs["format_version"] = 1
        f.attrs["num_classes"] = num_classes if labels else 0
        f.attrs["latent_mean"] = np.zeros(shape[0])
        f.attrs["latent_std"] = np.ones(shape[0])
        f.create_dataset("latents", data=rng.standard_normal((n,) + shape).astype(dtype),
                         chunks=(min(n, 4),) + shape)
        if labels:
            values = np.arange(n) % num_classes if label_values is None else label_values
            f.create_dataset("labels", data=np.asarray(values, dtype=np.int32))


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    p = lambda name: os.path.join(out, name)
    with open(p("not-hdf5.h5"), "w") as f:
        f.write("this is a text file, not HDF5\n")
    # An HDF5 file with labels but neither /images nor /latents.
    with h5py.File(p("no-samples.h5"), "w") as f:
        f.attrs["num_classes"] = 10
        f.create_dataset("labels", data=np.zeros(16, dtype=np.int32))
        f.create_dataset("pixels", data=np.zeros((16, 8, 8, 4), dtype=np.uint8))
    # /latents (N, C, H*W): one dimension short.
    latents_file(p("wrong-rank.h5"))
    with h5py.File(p("wrong-rank.h5"), "a") as f:
        del f["latents"]
        f.create_dataset("latents", data=np.zeros((16, 4, 64), dtype=np.float32))
    latents_file(p("wrong-dtype.h5"), dtype=np.float64)
    # Label 12 at sample 5, while the file says 10 classes.
    latents_file(p("labels-out-of-range.h5"), label_values=[0, 1, 2, 3, 4, 12, 6, 7, 8, 9, 0, 1, 2, 3, 4, 5])
    # 3 channels where the model takes 4.
    latents_file(p("wrong-shape.h5"), shape=(3, 8, 8))
    # 8x8 images with 4 channels would be accepted; 16x16 are not.
    with h5py.File(p("wrong-image-size.h5"), "w") as f:
        f.attrs["num_classes"] = 10
        f.create_dataset("images", data=np.zeros((16, 16, 16, 4), dtype=np.uint8))
        f.create_dataset("labels", data=np.arange(16, dtype=np.int32) % 10)
    # A valid file of 20 classes: labels 10..19 do not fit the model's 10.
    latents_file(p("too-many-classes.h5"), num_classes=20, label_values=np.arange(16) % 20)
    # One sample cannot be shared by two ranks.
    latents_file(p("one-sample.h5"), n=1)
    # Rows 4..7 (the second chunk) damaged on disk: the file opens and
    # describes itself fine, and the chunk's checksum fails when it is read.
    with h5py.File(p("damaged-chunk.h5"), "w") as f:
        f.attrs["num_classes"] = 10
        f.attrs["latent_mean"] = np.zeros(4)
        f.attrs["latent_std"] = np.ones(4)
        ds = f.create_dataset("latents", data=np.ones((16, 4, 8, 8), dtype=np.float32), chunks=(4, 4, 8, 8),
                              fletcher32=True)
        chunk = ds.id.get_chunk_info(1)
        offset, size = chunk.byte_offset, chunk.size
    with open(p("damaged-chunk.h5"), "r+b") as f:
        f.seek(offset + size // 2)
        f.write(b"damaged!")


if __name__ == "__main__":
    main()
