#!/usr/bin/env python3
"""`ldm train --init` on a file that model/convert_dit_checkpoint.py made from a
PyTorch DiT checkpoint in the public DiT's layout, checked against PyTorch:

  1. a DiT with learn_sigma's 2C output channels (tests/dit_reference.py's model
     with the public DiT's FinalLayer of P*P*2C outputs), random weights (every
     tensor nonzero), saved as a train.py checkpoint {"model", "ema", "args"}
     with different "model" and "ema" weights;
  2. the converter writes the EMA weights; `ldm train --init` with the step's
     gradient poisoned (so the step is skipped and the weights stay as loaded)
     exports RUN/model.safetensors and RUN/ema.safetensors: every tensor equal,
     bit for bit, to the PyTorch EMA weights with final_layer.linear's rows of
     the eps half kept (the converter's rule);
  3. `ldm forward` on those weights against the PyTorch model's output channels
     0..C-1 (its eps prediction) on random inputs;
  4. the converter on a plain state dict without learn_sigma, with the
     "module." prefix of DistributedDataParallel: written as it is;
  5. a checkpoint holding train.py's argparse.Namespace, with --trust-pickle.

Exits 77 (skipped) without torch.
usage: check_init_torch.py LDM LDM_POISONED CONFIGS_DIR WORK_DIR"""
import argparse
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

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, here)
from dit_reference import DiT, FinalLayer  # noqa: E402
from make_dit_fixture import read_safetensors  # noqa: E402

CONVERTER = os.path.join(here, "..", "model", "convert_dit_checkpoint.py")
TOLERANCE = 1e-4  # of the output's largest magnitude: fp32 on both sides, different summation orders


def fail(message):
    sys.exit("FAIL: " + message)


def public_dit(config, learn_sigma, seed):
    """The public DiT's module layout: out_channels 2C with learn_sigma."""
    torch.manual_seed(seed)
    model = DiT(**config)
    if learn_sigma:
        model.out_channels = 2 * config["in_channels"]
        model.final_layer = FinalLayer(config["hidden_size"], config["patch_size"], model.out_channels)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "pos_embed":
                p.copy_(0.2 * torch.randn_like(p))
    return model


def run(*command, env=None):
    print("+ " + " ".join(command), flush=True)
    result = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    print(result.stdout, end="")
    if result.returncode != 0:
        fail("exit status %d from %s" % (result.returncode, " ".join(command)))
    return result.stdout


def main():
    ldm, poisoned, configs, work = sys.argv[1:5]
    os.makedirs(work, exist_ok=True)
    config = json.load(open(os.path.join(configs, "tiny.json")))["model"]
    shape = {k: config[k] for k in ("input_size", "in_channels", "patch_size", "hidden_size", "depth", "num_heads",
                                    "mlp_ratio", "num_classes")}
    C, P = shape["in_channels"], shape["patch_size"]

    # 1. the checkpoint, as DiT's train.py saves it
    ema_model = public_dit(shape, True, seed=1)
    raw_model = public_dit(shape, True, seed=2)
    checkpoint = os.path.join(work, "0000100.pt")
    torch.save({"model": raw_model.state_dict(), "ema": ema_model.state_dict(), "opt": {}, "args": None},
               checkpoint)

    # 2. converted, loaded by ldm train --init, exported unchanged
    converted = os.path.join(work, "dit.safetensors")
    out = run(sys.executable, CONVERTER, checkpoint, converted)
    if "learn_sigma: kept the eps half" not in out:
        fail("the converter does not say it dropped the variance half")
    data = os.path.join(work, "latents.h5")
    if not os.path.exists(data):
        run(ldm, "prepare", "synthetic", "--n", "8", "--size", str(shape["input_size"]), "--classes", "4",
            "--channels", str(C), "--latents", "float32", "--out", data)
    env = dict(os.environ, LDM_TEST_POISON_GRADIENT_STEPS="1")
    out = run(poisoned, "train", "--config", os.path.join(configs, "tiny.json"), "--set", "device.type=cpu",
              "--set", "train.steps=1", "--data", data, "--init", converted, "--run", os.path.join(work, "run"),
              "--force", env=env)
    if "train: initial weights from " + converted not in out or "step skipped" not in out:
        fail("ldm train --init did not say it loaded the weights, or the step was not skipped")
    expected = {k: v.detach().numpy() for k, v in ema_model.state_dict().items()}
    rows = np.arange(P * P * 2 * C).reshape(P * P, 2 * C)[:, :C].reshape(-1)
    expected["final_layer.linear.weight"] = expected["final_layer.linear.weight"][rows]
    expected["final_layer.linear.bias"] = expected["final_layer.linear.bias"][rows]
    for which in ("model", "ema"):
        tensors = read_safetensors(os.path.join(work, "run", which + ".safetensors"))[0]
        if sorted(tensors) != sorted(expected):
            fail("%s.safetensors holds %s, expected %s" % (which, sorted(tensors), sorted(expected)))
        for name, want in expected.items():
            got = tensors[name]
            if got.shape != want.shape or not np.array_equal(got.view(np.uint32), want.astype(np.float32).view(np.uint32)):
                fail("%s.safetensors: %s differs from the PyTorch EMA weights" % (which, name))
    print("ok: RUN/model.safetensors and ema.safetensors are the checkpoint's EMA weights, eps rows kept")

    # 3. ldm forward against the public model's eps channels
    gen = np.random.default_rng(7)
    n, s = 5, shape["input_size"]
    x = gen.standard_normal((n, C, s, s)).astype(np.float32)
    t = (250.0 * gen.normal(-1.2, 1.2, n)).astype(np.float32)
    y = np.array([0, 1, shape["num_classes"], 3, shape["num_classes"]], dtype=np.int32)
    inputs, output = os.path.join(work, "inputs.h5"), os.path.join(work, "out.h5")
    with h5py.File(inputs, "w") as f:
        f["x"], f["t"], f["y"] = x, t, y
    if os.path.exists(output):
        os.remove(output)
    run(ldm, "forward", "--config", os.path.join(configs, "tiny.json"), "--weights",
        os.path.join(work, "run", "model.safetensors"), "--input", inputs, "--output", output)
    with torch.no_grad():
        full = ema_model(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(y).long()).numpy()
    if full.shape[1] != 2 * C:
        fail("the PyTorch model does not have learn_sigma's 2C outputs")
    with h5py.File(output, "r") as f:
        got = f["out"][...]
    scale = max(np.abs(full[:, :C]).max(), 1e-12)
    err = np.abs(got - full[:, :C]).max() / scale
    print("ldm forward against the PyTorch DiT's eps channels: max difference %.3g of the largest output %.4g"
          % (err, scale))
    if not err <= TOLERANCE:
        fail("ldm's output differs by %.3g > %g" % (err, TOLERANCE))

    # 4. a plain state dict, learn_sigma=False, DDP's prefix
    plain = public_dit(shape, False, seed=3)
    plain_path = os.path.join(work, "plain.pt")
    torch.save({"module." + k: v for k, v in plain.state_dict().items()}, plain_path)
    plain_converted = os.path.join(work, "plain.safetensors")
    run(sys.executable, CONVERTER, plain_path, plain_converted)
    tensors = read_safetensors(plain_converted)[0]
    for name, value in plain.state_dict().items():
        if name not in tensors or not np.array_equal(tensors[name], value.numpy()):
            fail("plain.safetensors: %s is not the state dict's" % name)
    # 5. train.py's "args" (an argparse.Namespace): read with --trust-pickle on any torch
    with_args = os.path.join(work, "with-args.pt")
    torch.save({"ema": plain.state_dict(), "args": argparse.Namespace(model="DiT-S/2")}, with_args)
    run(sys.executable, CONVERTER, "--trust-pickle", with_args, os.path.join(work, "with-args.safetensors"))
    print("ok: converted, loaded and exported as the public layout says")


if __name__ == "__main__":
    main()
