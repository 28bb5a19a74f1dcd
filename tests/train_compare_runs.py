#!/usr/bin/env python3
"""Compares two `ldm train` runs: the per-step losses of metrics.jsonl and the
tensors of a weights file, with relative tolerances (numpy only, so that CI needs
no PyTorch; safetensors is parsed here from its published layout: an 8-byte
little-endian header length, a JSON header, then the raw data).

usage: train_compare_runs.py RUN_A RUN_B --steps N --loss-rtol R --weights-rtol R
       [--weights model.safetensors] [--exact]
--exact asks for bit-identical losses and weights instead."""
import argparse
import json
import struct
import sys

import numpy as np


def losses(run, steps):
    values = []
    with open(f"{run}/metrics.jsonl") as f:
        for line in f:
            record = json.loads(line)
            values.append(record["loss"])
    if len(values) < steps:
        sys.exit(f"{run}/metrics.jsonl: {len(values)} steps, expected at least {steps}")
    return np.array(values[:steps], dtype=np.float64)


def tensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_len])
    base = 8 + header_len
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] != "F32":
            sys.exit(f"{path}: {name}: expected F32, found {info['dtype']}")
        begin, end = info["data_offsets"]
        out[name] = np.frombuffer(data[base + begin:base + end], dtype="<f4").reshape(info["shape"])
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("run_a")
    p.add_argument("run_b")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--loss-rtol", type=float, default=0.0)
    p.add_argument("--weights-rtol", type=float, default=0.0)
    p.add_argument("--weights", default="model.safetensors")
    p.add_argument("--exact", action="store_true")
    a = p.parse_args()

    la, lb = losses(a.run_a, a.steps), losses(a.run_b, a.steps)
    if not (np.all(np.isfinite(la)) and np.all(np.isfinite(lb))):
        sys.exit("non-finite losses")
    loss_err = np.max(np.abs(la - lb) / np.abs(lb))
    print(f"losses: first {a.steps}, max relative difference {loss_err:.3g} (first {la[0]:.6g}, last {la[-1]:.6g})")

    ta, tb = tensors(f"{a.run_a}/{a.weights}"), tensors(f"{a.run_b}/{a.weights}")
    if sorted(ta) != sorted(tb):
        sys.exit("the weight files hold different tensors")
    # Weights: the largest difference relative to the model's largest weight.
    # Per entry it would be meaningless for weights that start at zero (adaLN,
    # biases), where Adam turns rounding-level gradient differences into
    # lr-sized steps of either sign.
    scale = max(max(np.max(np.abs(t)) for t in tb.values()), 1e-12)
    worst, worst_name = 0.0, ""
    identical = True
    for name in ta:
        x, y = ta[name].astype(np.float64), tb[name].astype(np.float64)
        identical = identical and ta[name].tobytes() == tb[name].tobytes()
        err = np.max(np.abs(x - y)) / scale
        if err > worst:
            worst, worst_name = err, name
    print(f"weights: {len(ta)} tensors, largest weight {scale:.4g}, max difference relative to it {worst:.3g} "
          f"({worst_name})")

    if a.exact:
        if not identical or not np.array_equal(la, lb):
            sys.exit("FAIL: the runs are not bit-identical")
        print("bit-identical")
        return
    if loss_err > a.loss_rtol:
        sys.exit(f"FAIL: losses differ by {loss_err:.3g} > {a.loss_rtol}")
    if worst > a.weights_rtol:
        sys.exit(f"FAIL: weights differ by {worst:.3g} > {a.weights_rtol}")
    print("agree")


if __name__ == "__main__":
    main()
