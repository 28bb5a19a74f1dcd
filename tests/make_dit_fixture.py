"""Make tests/fixtures/dit_small.safetensors: a PyTorch reference for ldm's DiT.

Regenerate (from the repository root, with Debian's python3-torch and numpy):

    /usr/bin/python3 tests/make_dit_fixture.py            # writes the fixture, checks it
    /usr/bin/python3 tests/make_dit_fixture.py --out F    # somewhere else
    /usr/bin/python3 tests/make_dit_fixture.py --guided   # dit_small_guided.safetensors

--guided makes the same model with a guidance-scale input (w_embedder.mlp.*, the
student of guidance-range distillation) and adds input.w (4,) to the file; the
forward pass is model(x, t, y, w).

The model is tests/dit_reference.py's DiT with SMALL_CONFIG (8x8x4 input, patch 2,
hidden 64, depth 2, 4 heads, mlp_ratio 4, 10 classes), run in float64. Every parameter
gets deterministic random values (not the adaLN-Zero init, so every gradient is
nonzero); all values are rounded to float32 before use, so the F32 tensors in the file
are exactly the weights and inputs the float64 reference computed with.

Contents (all F32 except input.y, I32):
  <state_dict name>     the initial weights, pos_embed included
  input.x (4,4,8,8), input.t (4,) [time input t = 250 ln sigma], input.y (4,) [10 = null],
  input.target (4,4,8,8), input.weight (4,)
  output (4,4,8,8)      model(x, t, y)
  loss (1,)             (1/B) sum_b weight_b * mean_j (output_bj - target_bj)^2
  grad.<name>           d loss / d param, every trainable parameter (not pos_embed)
  adamw.hparams (5,)    lr, beta1, beta2, eps, weight_decay
  adamw.losses (10,)    loss_k before step k of torch.optim.AdamW on the same batch,
                        starting from the initial weights (loss_0 = loss)
  __metadata__          config (JSON of the model shape), generator, torch version

The safetensors file is written by hand (the safetensors package may not be there):
8-byte little-endian header length, JSON header, tensors in sorted name order,
contiguous little-endian data.
"""

import argparse
import json
import os
import struct
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dit_reference import DiT, SMALL_CONFIG, weighted_mse  # noqa: E402

SEED = 1234
ADAMW = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01)
ADAMW_STEPS = 10


# ----------------------------------------------------------------------------
# safetensors, by hand

_DTYPES = {np.dtype("<f4"): "F32", np.dtype("<i4"): "I32", np.dtype("<f8"): "F64",
           np.dtype("<i8"): "I64"}
_NP = {v: k for k, v in _DTYPES.items()}


def write_safetensors(path, tensors, metadata):
    """tensors: name -> numpy array (F32/I32); metadata: str -> str."""
    header = {"__metadata__": metadata}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        raw = a.tobytes(order="C")
        header[name] = {"dtype": _DTYPES[a.dtype], "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    hjson = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hjson += b" " * (-len(hjson) % 8)   # pad so the data starts 8-byte aligned
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for raw in blobs:
            f.write(raw)
    os.replace(tmp, path)


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", {})
    base = 8 + n
    out = {}
    end_max = 0
    for name, e in header.items():
        s, t = e["data_offsets"]
        dt = _NP[e["dtype"]]
        a = np.frombuffer(data[base + s:base + t], dtype=dt).reshape(e["shape"])
        assert a.nbytes == t - s, name
        out[name] = a.copy()
        end_max = max(end_max, t)
    assert base + end_max == len(data), "trailing or missing bytes"
    return out, meta


# ----------------------------------------------------------------------------
# Deterministic random weights (not the zero init)


def f32_exact(t):
    """Round a float64 tensor to float32 values, kept in float64."""
    return t.to(torch.float32).to(torch.float64)


def randomise(model, gen):
    """Every parameter random, activations O(1), adaLN gates modest but nonzero."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "pos_embed":
                p.copy_(f32_exact(p))
                continue
            if name.endswith("bias"):
                std = 0.05
            elif name == "y_embedder.embedding_table.weight":
                std = 0.5
            else:
                fan_in = p[0].numel()   # Linear (out, in) and Conv (out, in, p, p)
                std = 1.0 / fan_in ** 0.5
                if "adaLN_modulation" in name:
                    std *= 0.5          # shift/scale/gate ~ 0.1-0.3
            v = torch.randn(p.shape, generator=gen, dtype=torch.float64) * std
            p.copy_(f32_exact(v))


def make_batch(gen):
    x = f32_exact(torch.randn(4, 4, 8, 8, generator=gen, dtype=torch.float64))
    target = f32_exact(torch.randn(4, 4, 8, 8, generator=gen, dtype=torch.float64))
    t = torch.tensor([-700.0, -150.0, 0.0, 400.0], dtype=torch.float64)
    y = torch.tensor([3, 0, 10, 7], dtype=torch.int64)
    w = torch.tensor([0.5, 1.0, 2.0, 1.5], dtype=torch.float64)
    return x, t, y, target, w


GUIDANCE = torch.tensor([1.0, 2.5, 4.0, 1.75], dtype=torch.float64)


def run(model, x, t, y):
    """model(x, t, y), with the guidance scales when the model takes them."""
    if model.w_embedder is None:
        return model(x, t, y)
    return model(x, t, y, GUIDANCE.to(x.dtype))


def forward_backward(model, batch, dtype):
    x, t, y, target, w = batch
    model.zero_grad(set_to_none=True)
    out = run(model, x.to(dtype), t.to(dtype), y)
    loss = weighted_mse(out, target.to(dtype), w.to(dtype))
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()
             if p.requires_grad}
    return out.detach(), loss.detach(), grads


def adamw_losses(model, batch):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=ADAMW["lr"], betas=(ADAMW["beta1"], ADAMW["beta2"]),
                            eps=ADAMW["eps"], weight_decay=ADAMW["weight_decay"])
    x, t, y, target, w = batch
    losses = []
    for _ in range(ADAMW_STEPS):
        opt.zero_grad(set_to_none=True)
        loss = weighted_mse(run(model, x, t, y), target, w)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def rel_diff(a, b):
    """max |a - b| / max |b| (b the float64 reference)."""
    a = a.to(torch.float64)
    return (a - b).abs().max().item() / max(b.abs().max().item(), 1e-300)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--guided", action="store_true", help="the model with a guidance-scale input")
    ap.add_argument("--out", default=None, help="default tests/fixtures/dit_small[_guided].safetensors")
    args = ap.parse_args()
    config = dict(SMALL_CONFIG, guidance_input=True) if args.guided else SMALL_CONFIG
    if args.out is None:
        args.out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures",
                                "dit_small_guided.safetensors" if args.guided else "dit_small.safetensors")

    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    model = DiT(**config).to(torch.float64)
    randomise(model, gen)
    batch = make_batch(gen)
    x, t, y, target, w = batch
    init_state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    out, loss, grads = forward_backward(model, batch, torch.float64)

    # Gradients must all be nonzero, else the fixture cannot catch a missing term.
    for n, g in grads.items():
        assert g.abs().max().item() > 0, "zero gradient: " + n

    # Cross-check: the same weights in float32.
    m32 = DiT(**config)
    m32.load_state_dict({k: v.to(torch.float32) for k, v in init_state.items()})
    out32, loss32, grads32 = forward_backward(m32, batch, torch.float32)
    d_out = rel_diff(out32, out)
    d_loss = rel_diff(loss32, loss)
    d_grad = max(rel_diff(grads32[n], grads[n]) for n in grads)
    worst = max(grads, key=lambda n: rel_diff(grads32[n], grads[n]))

    losses = adamw_losses(model, batch)
    assert abs(losses[0] - loss.item()) <= 1e-12 * abs(loss.item())

    tensors = {k: v.to(torch.float32).numpy() for k, v in init_state.items()}
    tensors["input.x"] = x.to(torch.float32).numpy()
    tensors["input.t"] = t.to(torch.float32).numpy()
    tensors["input.y"] = y.to(torch.int32).numpy()
    tensors["input.target"] = target.to(torch.float32).numpy()
    tensors["input.weight"] = w.to(torch.float32).numpy()
    if args.guided:
        tensors["input.w"] = GUIDANCE.to(torch.float32).numpy()
    tensors["output"] = out.to(torch.float32).numpy()
    tensors["loss"] = loss.reshape(1).to(torch.float32).numpy()
    for n, g in grads.items():
        tensors["grad." + n] = g.to(torch.float32).numpy()
    tensors["adamw.hparams"] = np.array([ADAMW["lr"], ADAMW["beta1"], ADAMW["beta2"],
                                         ADAMW["eps"], ADAMW["weight_decay"]], np.float32)
    tensors["adamw.losses"] = np.array(losses, np.float32)
    metadata = {"config": json.dumps(config, sort_keys=True),
                "generator": "tests/make_dit_fixture.py",
                "torch": torch.__version__}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_safetensors(args.out, tensors, metadata)

    # Read back and compare.
    back, meta = read_safetensors(args.out)
    assert meta == metadata
    assert sorted(back) == sorted(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape, k
        assert np.array_equal(back[k], v), k
    m_back = DiT(**config).to(torch.float64)
    m_back.load_state_dict({k: torch.from_numpy(back[k]).to(torch.float64)
                            for k in init_state}, strict=True)
    o_back = run(m_back, torch.from_numpy(back["input.x"]).double(),
                 torch.from_numpy(back["input.t"]).double(),
                 torch.from_numpy(back["input.y"]).long())
    assert torch.equal(o_back.detach(), out), "reloaded weights give another output"

    size = os.path.getsize(args.out)
    assert size < 2 * 1024 * 1024
    n_params = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad)
    print("wrote %s: %d tensors, %d bytes, %d trainable parameters"
          % (args.out, len(tensors), size, n_params))
    print("loss %.9g; adamw.losses %s" % (loss.item(), " ".join("%.6g" % v for v in losses)))
    print("output std %.4g, max |output| %.4g" % (out.std().item(), out.abs().max().item()))
    print("float32 vs float64 (max|a-b|/max|b|): output %.3g  loss %.3g  grads %.3g (worst %s)"
          % (d_out, d_loss, d_grad, worst))


if __name__ == "__main__":
    main()
