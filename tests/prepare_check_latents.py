#!/usr/bin/env python3
"""Checks an `ldm prepare synthetic --latents TYPE` output against the /images
file made with the same arguments: /latents (N, C, H, W) of TYPE holds the same
pictures mapped to [-1, 1] (p / 127.5 - 1), the labels and class names are
the same, latent_mean and latent_std are each channel's mean and (population)
standard deviation over the whole set, computed here in float64, and the
autoencoder attribute says the latents are synthetic.

usage: prepare_check_latents.py IMAGES.h5 LATENTS.h5 float32|float16
"""
import sys

import h5py
import numpy as np


def text(value):
    return value.decode() if isinstance(value, bytes) else str(value)


def main():
    images_path, latents_path, element = sys.argv[1:4]
    failures = []
    with h5py.File(images_path, "r") as fi, h5py.File(latents_path, "r") as fl:
        images = fi["images"][...]
        expected = (images.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(127.5) - np.float32(1))
        latents = fl["latents"]
        if latents.dtype != np.dtype(element):
            failures.append(f"/latents dtype {latents.dtype}, expected {element}")
        got = latents[...].astype(np.float32)
        if got.shape != expected.shape:
            failures.append(f"/latents shape {got.shape}, expected {expected.shape}")
        else:
            # float16 keeps 11 significant bits: within half a unit at 1.0.
            tolerance = 0 if element == "float32" else 2.0 ** -11
            error = np.abs(got - expected).max()
            if error > tolerance:
                failures.append(f"/latents differ from the images by up to {error}")
        if not np.array_equal(fi["labels"][...], fl["labels"][...]):
            failures.append("labels differ from the images file")
        if [text(x) for x in fi.attrs["class_names"]] != [text(x) for x in fl.attrs["class_names"]]:
            failures.append("class_names differ from the images file")
        values = images.astype(np.float64) / 127.5 - 1.0
        mean = values.mean(axis=(0, 1, 2))
        std = values.std(axis=(0, 1, 2))
        got_mean = np.asarray(fl.attrs["latent_mean"], dtype=np.float64)
        got_std = np.asarray(fl.attrs["latent_std"], dtype=np.float64)
        if got_mean.shape != mean.shape or np.abs(got_mean - mean).max() > 1e-12:
            failures.append(f"latent_mean {got_mean}, expected {mean}")
        if got_std.shape != std.shape or np.abs(got_std - std).max() > 1e-12:
            failures.append(f"latent_std {got_std}, expected {std}")
        autoencoder = text(np.asarray(fl.attrs["autoencoder"]).reshape(-1)[0])
        if "synthetic" not in autoencoder:
            failures.append(f"autoencoder '{autoencoder}'")
    for failure in failures:
        print(f"{latents_path}: {failure}", file=sys.stderr)
    if failures:
        return 1
    print(f"{latents_path}: {element} latents, labels and statistics agree with {images_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
