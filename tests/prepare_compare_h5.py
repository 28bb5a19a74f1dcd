#!/usr/bin/env python3
"""Compares two HDF5 files exactly: the same data sets (names, element types,
shapes, every value) and the same attributes on every object. Exit status 0
when identical, 1 with the first differences on stderr otherwise. (h5diff
reports data sets of different shapes as "not comparable" with exit status 0,
which a test cannot use.)

usage: prepare_compare_h5.py A.h5 B.h5
"""
import sys

import h5py
import numpy as np


def attributes(obj):
    return {k: np.asarray(v) for k, v in obj.attrs.items()}


def same_array(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)


def compare(path_a, path_b):
    differences = []
    with h5py.File(path_a, "r") as fa, h5py.File(path_b, "r") as fb:
        objects_a, objects_b = {"/": fa}, {"/": fb}
        fa.visititems(lambda name, obj: objects_a.__setitem__("/" + name, obj))
        fb.visititems(lambda name, obj: objects_b.__setitem__("/" + name, obj))
        if sorted(objects_a) != sorted(objects_b):
            differences.append(f"objects {sorted(objects_a)} vs {sorted(objects_b)}")
        for name in sorted(set(objects_a) & set(objects_b)):
            a, b = objects_a[name], objects_b[name]
            if isinstance(a, h5py.Dataset) != isinstance(b, h5py.Dataset):
                differences.append(f"{name}: a data set in one file only")
            elif isinstance(a, h5py.Dataset) and not same_array(a[...], b[...]):
                differences.append(f"{name}: {a.dtype} {a.shape} vs {b.dtype} {b.shape}, or values differ")
            attrs_a, attrs_b = attributes(a), attributes(b)
            if sorted(attrs_a) != sorted(attrs_b):
                differences.append(f"{name}: attributes {sorted(attrs_a)} vs {sorted(attrs_b)}")
            for key in sorted(set(attrs_a) & set(attrs_b)):
                if not same_array(attrs_a[key], attrs_b[key]):
                    differences.append(f"{name}: attribute {key}: {attrs_a[key]} vs {attrs_b[key]}")
    return differences


def main():
    differences = compare(sys.argv[1], sys.argv[2])
    for d in differences[:10]:
        print(f"{sys.argv[1]} vs {sys.argv[2]}: {d}", file=sys.stderr)
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
