#!/usr/bin/env python3
"""Export check: the weights a checkpoint of `ldm train` holds load into the
PyTorch DiT of tests/dit_reference.py with load_state_dict (strict: every name and
shape), and PyTorch's output on random inputs matches `ldm forward` with the same
file, for the model and the EMA weights. Exits 77 (skipped) without torch.

usage: check_export_torch.py LDM CHECKPOINT_DIR WORK_DIR"""
import json
import os
import subprocess
import sys

try:
    import torch
except ImportError:
    print("skipped: PyTorch is not installed (LDM_WITH_TORCH=1 ./launch/install-deps.sh)")
    sys.exit(77)
import h5py
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dit_reference import DiT  # noqa: E402
from make_dit_fixture import read_safetensors  # noqa: E402

TOLERANCE = 1e-4  # of the output's largest magnitude: fp32 on both sides, different summation orders


def main():
    ldm, checkpoint, work = sys.argv[1:4]
    os.makedirs(work, exist_ok=True)
    state = json.load(open(f"{checkpoint}/state.json"))
    m = state["config"]["model"]
    config_path = f"{work}/config.json"
    json.dump(state["config"], open(config_path, "w"))
    model = DiT(input_size=m["input_size"], in_channels=m["in_channels"], patch_size=m["patch_size"],
                hidden_size=m["hidden_size"], depth=m["depth"], num_heads=m["num_heads"],
                mlp_ratio=m["mlp_ratio"], num_classes=m["num_classes"])
    gen = np.random.default_rng(7)
    n, c, s = 5, m["in_channels"], m["input_size"]
    x = gen.standard_normal((n, c, s, s)).astype(np.float32)
    t = (250.0 * gen.normal(-1.2, 1.2, n)).astype(np.float32)  # t = 250 ln sigma
    y = np.array([0, 1, m["num_classes"], 2 % m["num_classes"], m["num_classes"]], dtype=np.int32)
    inputs = f"{work}/inputs.h5"
    with h5py.File(inputs, "w") as f:
        f["x"], f["t"], f["y"] = x, t, y
    for which in ("model", "ema"):
        weights = f"{checkpoint}/{which}.safetensors"
        tensors = {k: torch.from_numpy(v.copy()) for k, v in read_safetensors(weights)[0].items()}
        model.load_state_dict(tensors, strict=True)
        with torch.no_grad():
            expected = model(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(y).long()).numpy()
        output = f"{work}/out-{which}.h5"
        if os.path.exists(output):
            os.remove(output)
        subprocess.run([ldm, "forward", "--config", config_path, "--weights", weights, "--input", inputs,
                        "--output", output], check=True)
        with h5py.File(output, "r") as f:
            got = f["out"][...]
        scale = max(np.abs(expected).max(), 1e-12)
        err = np.abs(got - expected).max() / scale
        print(f"{which}: ldm forward against PyTorch: max difference {err:.3g} of the largest output {scale:.4g}")
        if not err <= TOLERANCE:
            sys.exit(f"FAIL: {which} differs by {err:.3g} > {TOLERANCE}")
    print("ok: the checkpoint loads in PyTorch under the DiT names and gives ldm's output")


if __name__ == "__main__":
    main()
