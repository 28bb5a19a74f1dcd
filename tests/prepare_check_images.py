#!/usr/bin/env python3
"""Checks an `ldm prepare images` output against its folder, listed here
independently of ldm: the sample count, the class names (sorted first-level
subfolders holding PNGs), every label (the class folder of the file at that
row, rows in path order), and that a solid-colour PNG became that colour
everywhere. Hidden entries are skipped, as ldm does.

usage: prepare_check_images.py DIR OUT.h5 SIZE CHANNELS SOLID_FILE R,G,B
"""
import os
import sys

import h5py
import numpy as np


def list_pngs(top):
    found = []
    for root, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [os.path.join(root, f) for f in files if not f.startswith(".") and f.lower().endswith(".png")
                  and len(f) > 4]
    return found


def main():
    top, out, size, channels, solid_file, solid = sys.argv[1:7]
    top = top.rstrip("/")
    size, channels = int(size), int(channels)
    solid = [int(v) for v in solid.split(",")]
    files = list_pngs(top)
    # Sorted as C's strcmp does: by bytes.
    files.sort(key=lambda p: p.encode())
    classes = sorted({os.path.relpath(p, top).split(os.sep)[0] for p in files}, key=lambda c: c.encode())
    labels = [classes.index(os.path.relpath(p, top).split(os.sep)[0]) for p in files]

    failures = []
    with h5py.File(out, "r") as f:
        images = f["images"][...]
        if images.shape != (len(files), size, size, channels):
            failures.append(f"/images shape {images.shape}, expected {(len(files), size, size, channels)}")
        got_labels = list(f["labels"][...])
        if got_labels != labels:
            failures.append(f"labels {got_labels}, expected {labels} for {files}")
        names = [x.decode() if isinstance(x, bytes) else str(x) for x in f.attrs["class_names"]]
        if names != classes or int(f.attrs["num_classes"]) != len(classes):
            failures.append(f"class_names {names} (num_classes {f.attrs['num_classes']}), expected {classes}")
        row = files.index(os.path.join(top, solid_file))
        if channels == 3 and not (images[row] == np.array(solid, dtype=np.uint8)).all():
            failures.append(f"row {row} ({solid_file}) is not the solid colour {solid}: {images[row][0, 0]}")
        if channels == 1 and images[row].min() != images[row].max():
            failures.append(f"row {row} ({solid_file}) is not one gray level")
    for failure in failures:
        print(f"{out}: {failure}", file=sys.stderr)
    if failures:
        return 1
    print(f"{out}: {len(files)} images, classes {classes}, labels follow the folders")
    return 0


if __name__ == "__main__":
    sys.exit(main())
