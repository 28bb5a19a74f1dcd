#!/usr/bin/env python3
"""Turns a public DiT checkpoint (facebookresearch/DiT: the released
DiT-XL-2-256x256.pt, or a train.py checkpoint {"model", "ema", "opt", "args"})
into a safetensors file that `ldm train --init` loads.

    python3 model/convert_dit_checkpoint.py DiT-XL-2-256x256.pt dit-xl-2.safetensors
    python3 model/convert_dit_checkpoint.py --weights model 0400000.pt out.safetensors

What it does:
  - takes the state dict: a train.py checkpoint's "ema" (as DiT's sample.py does;
    --weights model takes "model"), or the file itself when it is a state dict;
    torch.load reads tensors only (weights_only), and train.py's "args" (an
    argparse.Namespace) where the torch can allow that class by name (2.4 and
    later); --trust-pickle runs the whole pickle (for a file you trust, and
    for train.py checkpoints under an older torch such as Debian's 1.13);
    a "module." prefix (DistributedDataParallel) is removed;
  - learn_sigma: DiT's released models predict 2C output channels, the noise
    (eps) and the interpolation of the variance. ldm's DiT has C. The rule: keep
    the first C of the 2C output channels (the eps prediction) and drop the
    variance half. final_layer.linear's output index is (p_row * P + p_col) * 2C
    + channel (DiT's unpatchify, "nhwpqc"), so the rows kept are those with
    channel < C in every group of 2C, for its weight and bias. A model with C
    outputs (learn_sigma=False) is written as it is;
  - every other tensor (pos_embed included, which ldm checks against its own
    fixed sin-cos embedding) is written as float32 under the same name;
  - prints the ldm config keys the file fits (model.*), and the shape is checked
    again by ldm when it loads the file.

ldm trains with EDM (Karras et al. 2022): the network sees c_in-scaled inputs,
the time input 250 ln(sigma), and its output is combined by EDM's c_skip/c_out
preconditioning. The public DiT was trained with DDPM's eps-parameterisation
and integer timesteps 0..999 under a linear beta schedule. So these weights are
a starting point for fine-tuning under ldm's EDM objective (their features,
embeddings and attention carry over), not a drop-in sampler: sampled as they
are, with ldm's sampler, they do not give DiT's images.

Needs PyTorch (Debian's python3-torch 1.13 or PyPI's) and numpy. The
safetensors file is written by hand: 8-byte little-endian header length, JSON
header, the tensors' little-endian bytes.
"""

import argparse
import json
import os
import struct
import sys

import numpy as np

DIT_HEADS = {384: 6, 768: 12, 1024: 16, 1152: 16}  # DiT-S, B, L, XL (models.py)


def fail(message):
    print("convert_dit_checkpoint: error: " + message, file=sys.stderr)
    sys.exit(2)


def load_state_dict(path, which, trust_pickle):
    import torch
    # Tensors only (torch.load's weights_only), plus the argparse.Namespace that
    # DiT's train.py stores as "args" where this torch can allow it by name;
    # anything else in the pickle only with --trust-pickle.
    if hasattr(torch.serialization, "add_safe_globals"):
        torch.serialization.add_safe_globals([argparse.Namespace])
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except Exception as e:  # a damaged or foreign file, or objects beyond tensors
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = "" if trust_pickle else " (a checkpoint you trust that holds other objects: --trust-pickle)"
        fail("%s: cannot be read by torch.load: %s%s" % (path, message, hint))
    if not isinstance(checkpoint, dict):
        fail("%s: expected a state dict or a DiT train.py checkpoint, found %s" % (path, type(checkpoint).__name__))
    if which in checkpoint and isinstance(checkpoint[which], dict):
        checkpoint = checkpoint[which]
    elif which == "model" and "model" not in checkpoint and "ema" in checkpoint:
        fail("%s: --weights model: the checkpoint holds no \"model\"" % path)
    state = {}
    for name, value in checkpoint.items():
        if not hasattr(value, "detach"):
            fail("%s: entry '%s' is not a tensor (not a DiT state dict?)" % (path, name))
        if name.startswith("module."):
            name = name[len("module."):]
        state[name] = value.detach().to(torch.float32).cpu().numpy()
    return state


def convert(state, path):
    for name in ("x_embedder.proj.weight", "final_layer.linear.weight", "final_layer.linear.bias", "pos_embed",
                 "y_embedder.embedding_table.weight"):
        if name not in state:
            fail("%s: tensor '%s' is missing (not a DiT state dict?)" % (path, name))
    hidden, channels, patch, _ = state["x_embedder.proj.weight"].shape
    outputs = state["final_layer.linear.weight"].shape[0]
    if outputs == patch * patch * 2 * channels:
        learn_sigma = True
        # (P, P, 2C) output groups: keep channels 0..C-1 of each.
        index = np.arange(outputs).reshape(patch * patch, 2 * channels)[:, :channels].reshape(-1)
        state["final_layer.linear.weight"] = state["final_layer.linear.weight"][index]
        state["final_layer.linear.bias"] = state["final_layer.linear.bias"][index]
    elif outputs == patch * patch * channels:
        learn_sigma = False
    else:
        fail("%s: final_layer.linear.weight has %d outputs: expected P*P*C = %d or P*P*2C = %d (learn_sigma)"
             % (path, outputs, patch * patch * channels, patch * patch * 2 * channels))
    tokens = state["pos_embed"].shape[1]
    grid = int(round(tokens ** 0.5))
    depth = len({name.split(".")[1] for name in state if name.startswith("blocks.")})
    config = {
        "input_size": grid * patch, "in_channels": int(channels), "patch_size": int(patch),
        "hidden_size": int(hidden), "depth": depth,
        "num_heads": DIT_HEADS.get(int(hidden), 0),
        "mlp_ratio": state["blocks.0.mlp.fc1.weight"].shape[0] / hidden if depth else 4.0,
        "num_classes": state["y_embedder.embedding_table.weight"].shape[0] - 1,
    }
    return state, learn_sigma, config


def write_safetensors(path, tensors, metadata):
    header, offset, blobs = {"__metadata__": metadata}, 0, []
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name], dtype="<f4")
        blob = array.tobytes()
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    temporary = path + ".partial"
    with open(temporary, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)
    os.replace(temporary, path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="the DiT .pt file")
    parser.add_argument("out", help="the safetensors file to write")
    parser.add_argument("--weights", choices=["ema", "model"], default="ema",
                        help="of a train.py checkpoint: the EMA weights (default, as sample.py) or the raw ones")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="let torch.load run the checkpoint's pickle in full (weights_only=False)")
    args = parser.parse_args()
    state = load_state_dict(args.checkpoint, args.weights, args.trust_pickle)
    state, learn_sigma, config = convert(state, args.checkpoint)
    write_safetensors(args.out, state, {
        "source": os.path.basename(args.checkpoint),
        "converted_by": "model/convert_dit_checkpoint.py",
        "learn_sigma": "dropped the variance half of the output channels" if learn_sigma else "no",
    })
    sets = " ".join("--set model.%s=%s" % (k, v) for k, v in config.items() if k != "num_heads" or v)
    print("convert_dit_checkpoint: %s: %d tensors%s -> %s" % (
        args.checkpoint, len(state), ", learn_sigma: kept the eps half of the outputs" if learn_sigma else "",
        args.out))
    print("convert_dit_checkpoint: the model it fits: %s%s" % (
        sets, "" if config["num_heads"] else " (and model.num_heads: not in the weights; DiT's models.py has it)"))


if __name__ == "__main__":
    main()
