"""Time PyTorch's training step of a DiT, to compare with `ldm bench`.

    python tests/bench_dit_pytorch.py [--steps 10] [--warmup 2] [--batch 32] [--threads 2]
        [--config configs/dit-b2.json] [--device cpu|cuda] [--precision fp32|bf16]
        [--peak-tflops P] [--profile-gemm] [--gemm-shapes]

By default DiT-S in fp32 on the CPU; --config takes the model section of an ldm
config instead (e.g. configs/dit-b2.json: DiT-B/2 on 32x32x4 latents, 1000
classes), --device cuda runs on the GPU (timed with torch.cuda.synchronize) and
--precision bf16 wraps forward and loss in torch.autocast(bfloat16) (fp32 master
weights and optimizer, as PyTorch users train). The line also gives the model
FLOPs per second (3 x the forward's multiply-adds x 2, the count of ldm's
dit_forward_flops_per_sample) and, with --peak-tflops, their share of that peak
(MFU).

One step = forward of tests/dit_reference.py's DiT (DiT-S: 8x8x4 input, patch 1,
hidden 384, depth 12, 6 heads, mlp_ratio 4, 10 classes; the paper's init), EDM-weighted
MSE, backward, torch.optim.AdamW step. The batch (x, t = 250 ln sigma with
ln sigma ~ N(-1.2, 1.2), y with the null class, target, loss weights) is random and made
once, outside the timing. Prints one line:

    pytorch: images_per_s=X ms_per_step=Y tflops=F [mfu=M] torch=VERSION device=D precision=P threads=N

With --profile-gemm (CPU) it then runs --steps more steps under torch.profiler and
prints a second line with the time per step spent inside the matrix products (self
time, so what the BLAS library did): the linear layers' (aten::mm, addmm) and
attention's two products' (aten::bmm, baddbmm), forward and backward, beside the
profiled step's wall time:

    pytorch_gemm: linear_ms=L attention_products_ms=A step_ms=S

With --gemm-shapes (CPU, fp32) it times no step but the products of one block's
linear layers (qkv, proj, fc1, fc2 at batch x tokens rows) as PyTorch's linear runs
them (forward addmm(bias, x, W^T), input gradient dy W, weight gradient dy^T x), each
--warmup times and then 3 rounds of --steps calls, the best round's ms per call, as
`ldm bench --model gemm` times its own:

    pytorch_gemm: qkv forward rows=R in=I out=O ms=M gflops=G   (12 lines)
    pytorch_gemm_total: ms_per_block=T gflops=G torch=VERSION threads=N

tests/bench_vs_pytorch.sh runs this next to `ldm bench` (with --gemm-time both sides'
GEMM time in the step, with --gemm-shapes the products alone, product by product).
"""

import argparse
import contextlib
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dit_reference import DiT, DIT_S_CONFIG, weighted_mse  # noqa: E402


def model_config(path):
    """DiT keyword arguments from an ldm config's model section (DiT-S without one)."""
    if path is None:
        return dict(DIT_S_CONFIG)
    with open(path) as f:
        m = json.load(f)["model"]
    return dict(input_size=m["input_size"], in_channels=m["in_channels"], patch_size=m["patch_size"],
                hidden_size=m["hidden_size"], depth=m["depth"], num_heads=m["num_heads"],
                mlp_ratio=m.get("mlp_ratio", 4.0), num_classes=m["num_classes"])


def forward_flops_per_sample(c):
    """2 x the multiply-adds of one forward pass (ldm's dit_forward_flops_per_sample)."""
    p, d, ch, e = c["patch_size"], c["hidden_size"], c["in_channels"], 256
    f = int(d * c["mlp_ratio"])
    t = (c["input_size"] // p) ** 2
    macs = t * ch * p * p * d + e * d + d * d
    macs += c["depth"] * (6 * d * d + t * (3 * d * d + d * d + 2 * d * f) + 2 * t * t * d)
    macs += 2 * d * d + t * d * p * p * ch
    return 2.0 * macs


def gemm_shapes(cfg, batch, warmup, steps, threads):
    """One block's linear-layer products alone (the module docstring's --gemm-shapes)."""
    d = cfg["hidden_size"]
    f = int(d * cfg["mlp_ratio"])
    rows = batch * (cfg["input_size"] // cfg["patch_size"]) ** 2
    total_s = total_flops = 0.0
    for name, n_in, n_out in (("qkv", d, 3 * d), ("proj", d, d), ("fc1", d, f), ("fc2", f, d)):
        x, w, b, dy = torch.randn(rows, n_in), torch.randn(n_out, n_in), torch.randn(n_out), torch.randn(rows, n_out)
        products = (("forward", lambda: torch.addmm(b, x, w.t())), ("d_input", lambda: dy.mm(w)),
                    ("d_weight", lambda: dy.t().mm(x)))
        for product, run in products:
            for _ in range(warmup):
                run()
            best = None
            for _ in range(3):
                t0 = time.perf_counter()
                for _ in range(steps):
                    run()
                s = (time.perf_counter() - t0) / steps
                best = s if best is None or s < best else best
            flops = 2.0 * rows * n_in * n_out
            total_s += best
            total_flops += flops
            print("pytorch_gemm: %s %s rows=%d in=%d out=%d ms=%.3f gflops=%.1f"
                  % (name, product, rows, n_in, n_out, best * 1e3, flops / best / 1e9), flush=True)
    print("pytorch_gemm_total: ms_per_block=%.2f gflops=%.1f torch=%s threads=%d"
          % (total_s * 1e3, total_flops / total_s / 1e9, torch.__version__, threads), flush=True)


def main():
    ap = argparse.ArgumentParser(description="PyTorch DiT training-step benchmark")
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--config", default=None, help="an ldm config: its model section (default DiT-S)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="dense peak of the device, for MFU")
    ap.add_argument("--profile-gemm", action="store_true",
                    help="then profile --steps steps and print the CPU time in matrix products")
    ap.add_argument("--gemm-shapes", action="store_true",
                    help="time one block's linear-layer products alone instead of a step (CPU, fp32)")
    args = ap.parse_args()
    if args.steps < 1 or args.warmup < 0 or args.batch < 1 or args.threads < 1:
        ap.error("--steps, --batch and --threads must be >= 1, --warmup >= 0")
    if args.gemm_shapes and (args.device != "cpu" or args.precision != "fp32" or args.profile_gemm):
        ap.error("--gemm-shapes times fp32 products on the CPU, without --profile-gemm")

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = model_config(args.config)
    if args.gemm_shapes:
        gemm_shapes(cfg, args.batch, args.warmup, args.steps, args.threads)
        return
    device = torch.device(args.device)
    model = DiT(**cfg).initialize_weights().to(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)

    B, C, S = args.batch, cfg["in_channels"], cfg["input_size"]
    sigma_data = 0.5
    ln_sigma = torch.randn(B) * 1.2 - 1.2
    sigma = ln_sigma.exp()
    x = torch.randn(B, C, S, S).to(device)
    t = (250.0 * ln_sigma).to(device)
    y = torch.randint(0, cfg["num_classes"] + 1, (B,)).to(device)
    target = torch.randn(B, C, S, S).to(device)
    w = ((sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2).to(device)

    def autocast():
        if args.precision == "bf16":
            return torch.autocast(device_type=args.device, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = weighted_mse(model(x, t, y).float(), target, w)
        loss.backward()
        opt.step()
        return loss

    def sync():
        if args.device == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    loss.item()
    sync()
    dt = (time.perf_counter() - t0) / args.steps
    tflops = 3 * forward_flops_per_sample(cfg) * B / dt / 1e12
    mfu = " mfu=%.3f" % (tflops / args.peak_tflops) if args.peak_tflops > 0 else ""
    print("pytorch: images_per_s=%.2f ms_per_step=%.1f tflops=%.3f%s torch=%s device=%s precision=%s threads=%d"
          % (B / dt, dt * 1e3, tflops, mfu, torch.__version__, args.device, args.precision, args.threads),
          flush=True)
    if args.profile_gemm:
        profile_gemm(step, args.steps)


LINEAR_PRODUCTS = ("aten::mm", "aten::addmm")  # nn.Linear, forward and backward
ATTENTION_PRODUCTS = ("aten::bmm", "aten::baddbmm")  # q k^T and p v, forward and backward


def profile_gemm(step, steps):
    """Time per step inside the matrix products' own code (self time: the BLAS
    call, not the ops around it), and the profiled step's wall time."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        dt = (time.perf_counter() - t0) / steps
    events = prof.key_averages()
    linear_ms = sum(e.self_cpu_time_total for e in events if e.key in LINEAR_PRODUCTS) / 1e3 / steps
    attention_ms = sum(e.self_cpu_time_total for e in events if e.key in ATTENTION_PRODUCTS) / 1e3 / steps
    if linear_ms <= 0:
        sys.exit("bench_dit_pytorch.py: the profile shows no linear layers' products (%s)" % ", ".join(LINEAR_PRODUCTS))
    print("pytorch_gemm: linear_ms=%.1f attention_products_ms=%.1f step_ms=%.1f" % (linear_ms, attention_ms, dt * 1e3),
          flush=True)

if __name__ == "__main__":
    main()
