"""Time PyTorch's fp32 CPU training step of DiT-S, to compare with `ldm bench`.

    python tests/bench_dit_pytorch.py [--steps 10] [--warmup 2] [--batch 32] [--threads 2]

One step = forward of tests/dit_reference.py's DiT (DiT-S: 8x8x4 input, patch 1,
hidden 384, depth 12, 6 heads, mlp_ratio 4, 10 classes; the paper's init), EDM-weighted
MSE, backward, torch.optim.AdamW step. The batch (x, t = 250 ln sigma with
ln sigma ~ N(-1.2, 1.2), y with the null class, target, loss weights) is random and made
once, outside the timing. Prints one line:

    pytorch: images_per_s=X ms_per_step=Y torch=VERSION threads=N

tests/bench_vs_pytorch.sh runs this next to `ldm bench`.
"""

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dit_reference import DiT, DIT_S_CONFIG, weighted_mse  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description="PyTorch DiT-S CPU training-step benchmark")
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if args.steps < 1 or args.warmup < 0 or args.batch < 1 or args.threads < 1:
        ap.error("--steps, --batch and --threads must be >= 1, --warmup >= 0")

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = DIT_S_CONFIG
    model = DiT(**cfg).initialize_weights()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)

    B, C, S = args.batch, cfg["in_channels"], cfg["input_size"]
    sigma_data = 0.5
    ln_sigma = torch.randn(B) * 1.2 - 1.2
    sigma = ln_sigma.exp()
    x = torch.randn(B, C, S, S)
    t = 250.0 * ln_sigma
    y = torch.randint(0, cfg["num_classes"] + 1, (B,))
    target = torch.randn(B, C, S, S)
    w = (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2

    def step():
        opt.zero_grad(set_to_none=True)
        loss = weighted_mse(model(x, t, y), target, w)
        loss.backward()
        opt.step()
        return loss

    for _ in range(args.warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    loss.item()
    dt = (time.perf_counter() - t0) / args.steps
    print("pytorch: images_per_s=%.2f ms_per_step=%.1f torch=%s threads=%d"
          % (B / dt, dt * 1e3, torch.__version__, args.threads), flush=True)


if __name__ == "__main__":
    main()
