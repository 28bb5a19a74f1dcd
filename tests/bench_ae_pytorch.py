"""Time PyTorch's training step of diffusers' AutoencoderKL, to compare with
`ldm bench --model ae`.

    python tests/bench_ae_pytorch.py [--steps 5] [--warmup 1] [--batch 32] [--threads 2]
        [--config configs/ae-fmnist.json] [--precision fp32|bf16]

The model is AutoencoderKL of the config's autoencoder section (in_channels,
input_size, block_out_channels, layers_per_block, latent_channels, norm_groups;
DownEncoderBlock2D / UpDecoderBlock2D per level, the mid block's attention), as
ldm builds it (same parameter count, printed). One step is what ldm's train-ae
computes: encode, z = the posterior's mean (autoencoder.sample_posterior false,
ldm's default) or a sample, decode, reconstruction (mean |x - x'| for "l1", mean
(x - x')^2 for "l2") + kl_beta * KL (posterior.kl() averaged over the batch:
0.5 sum(mean^2 + var - 1 - logvar) per sample, log-variance clamped to [-30, 20]
as in ldm), backward, torch.optim.AdamW (the config's lr, betas, eps and
weight_decay). --precision bf16 wraps forward and loss in
torch.autocast(bfloat16) (fp32 master weights and optimizer). Images are uniform
in [-1, 1], made once outside the timing. Prints one line:

    pytorch: images_per_s=X ms_per_step=Y cpu_ms_per_step=Z parameters=N torch=VERSION diffusers=VERSION precision=P threads=N

tests/bench_ae_vs_pytorch.sh runs this next to `ldm bench --model ae`.
"""

import argparse
import contextlib
import json
import time

import torch
import diffusers
from diffusers import AutoencoderKL


def load_config(path):
    with open(path) as f:
        c = json.load(f)
    a, t = c.get("autoencoder", {}), c.get("train", {})
    return a, t


def main():
    ap = argparse.ArgumentParser(description="PyTorch AutoencoderKL training-step benchmark")
    ap.add_argument("--steps", type=int, default=5, help="timed steps")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--config", default="configs/ae-fmnist.json", help="an ldm config: its autoencoder section")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    args = ap.parse_args()
    if args.steps < 1 or args.warmup < 0 or args.batch < 1 or args.threads < 1:
        ap.error("--steps, --batch and --threads must be >= 1, --warmup >= 0")

    a, t = load_config(args.config)
    # ldm's defaults where the config leaves a key out (train/config.c)
    channels = a.get("in_channels", 3)
    size = a.get("input_size", 32)
    widths = tuple(a.get("block_out_channels", [64, 128, 128]))
    kl_beta = a.get("kl_beta", 1e-6)
    l2 = a.get("reconstruction_loss", "l1") == "l2"
    sample_posterior = a.get("sample_posterior", False)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = AutoencoderKL(in_channels=channels, out_channels=channels,
                          down_block_types=("DownEncoderBlock2D",) * len(widths),
                          up_block_types=("UpDecoderBlock2D",) * len(widths),
                          block_out_channels=widths, layers_per_block=a.get("layers_per_block", 1),
                          latent_channels=a.get("latent_channels", 4), norm_num_groups=a.get("norm_groups", 32),
                          sample_size=size)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=t.get("lr", 1e-4), betas=(t.get("adam_beta1", 0.9), t.get("adam_beta2", 0.999)),
                            eps=t.get("adam_eps", 1e-8), weight_decay=t.get("weight_decay", 0.0))
    x = torch.rand(args.batch, channels, size, size) * 2 - 1

    def autocast():
        if args.precision == "bf16":
            return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast():
            posterior = model.encode(x).latent_dist
            z = posterior.sample() if sample_posterior else posterior.mode()
            rec = model.decode(z).sample.float()
            diff = rec - x
            reconstruction = (diff * diff).mean() if l2 else diff.abs().mean()
            loss = reconstruction + kl_beta * posterior.kl().float().mean()
        loss.backward()
        opt.step()
        return loss

    for _ in range(args.warmup):
        step()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        loss = step()
    loss.item()
    dt = (time.perf_counter() - t0) / args.steps
    cpu = (time.process_time() - c0) / args.steps
    print("pytorch: images_per_s=%.2f ms_per_step=%.1f cpu_ms_per_step=%.1f parameters=%d loss=%.5f torch=%s "
          "diffusers=%s precision=%s threads=%d"
          % (args.batch / dt, dt * 1e3, cpu * 1e3, sum(p.numel() for p in params), loss.item(), torch.__version__,
             diffusers.__version__, args.precision, args.threads), flush=True)


if __name__ == "__main__":
    main()
