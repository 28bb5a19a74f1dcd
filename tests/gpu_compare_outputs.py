#!/usr/bin/env python3
"""Compares an output of ldm made on the GPU with the CPU's (ldm sample and
decode: /images uint8; ldm encode: /latents float with the latent_mean and
latent_std attributes) within stated tolerances: the same data sets, shapes,
element types and labels; the values within TOL (uint8 images: TOL levels of
255; latents and their statistics: TOL relative to the largest magnitude of
the CPU's values, at least 1); every other attribute equal. Prints the
largest differences. Exit status 0 when within, 1 (the differences on stderr)
otherwise.

usage: gpu_compare_outputs.py CPU.h5 GPU.h5 TOL
"""
import sys

import h5py
import numpy as np


def compare(path_cpu, path_gpu, tol):
    problems = []
    with h5py.File(path_cpu, "r") as a, h5py.File(path_gpu, "r") as b:
        if sorted(a.keys()) != sorted(b.keys()):
            return [f"data sets {sorted(a.keys())} against {sorted(b.keys())}"]
        for name in sorted(a.keys()):
            x, y = a[name][...], b[name][...]
            if x.dtype != y.dtype or x.shape != y.shape:
                problems.append(f"/{name}: {x.dtype} {x.shape} against {y.dtype} {y.shape}")
                continue
            if name == "labels":
                if not np.array_equal(x, y):
                    problems.append("/labels differ")
                continue
            difference = float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))) if x.size else 0.0
            scale = 1.0 if x.dtype == np.uint8 else max(1.0, float(np.max(np.abs(x.astype(np.float64)))))
            print(f"/{name}: largest difference {difference:.3g} (allowed {tol * scale:.3g}), "
                  f"{np.mean(x != y):.3%} of the values differ")
            if not difference <= tol * scale:
                problems.append(f"/{name}: largest difference {difference:.3g} over {tol * scale:.3g}")
        for key in sorted(set(a.attrs) | set(b.attrs)):
            if key not in a.attrs or key not in b.attrs:
                problems.append(f"attribute {key} only in one file")
                continue
            u, v = np.asarray(a.attrs[key]), np.asarray(b.attrs[key])
            if key in ("latent_mean", "latent_std"):
                difference = float(np.max(np.abs(u - v)))
                scale = max(1.0, float(np.max(np.abs(u))))
                print(f"{key}: largest difference {difference:.3g} (allowed {tol * scale:.3g})")
                if not difference <= tol * scale:
                    problems.append(f"{key}: {u} against {v}")
            elif u.shape != v.shape or not np.array_equal(u, v):
                problems.append(f"attribute {key}: {u} against {v}")
    return problems


def main():
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    problems = compare(sys.argv[1], sys.argv[2], float(sys.argv[3]))
    for p in problems:
        print(f"gpu_compare_outputs: {sys.argv[2]} against {sys.argv[1]}: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
