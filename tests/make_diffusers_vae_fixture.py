"""Make the diffusers AutoencoderKL fixtures: folders as diffusers' save_pretrained writes
them, and what PyPI's diffusers computes with them, for tests/test_ae_diffusers.c.

Needs PyPI's torch and diffusers (CI has neither: the small fixtures are committed):

    python tests/make_diffusers_vae_fixture.py                 # writes tests/fixtures/diffusers_vae_*/
    python tests/make_diffusers_vae_fixture.py --sd-like DIR [--size 64]   # the SD-like check:
        writes DIR/sd_like/ (an SD VAE shaped model with random weights, not committed: 335 MB)
        and, with --check build-cpu/tests/test_ae_diffusers, runs ldm against it

Each fixture is a folder with
  config.json, diffusion_pytorch_model.safetensors   AutoencoderKL(...).save_pretrained(folder)
  expected.safetensors (all F32):
    images (B, C, H, W)    in [-1, 1], of the form p / 127.5 - 1 for uint8 p (so that an
                           ldm data set of those pixels gives exactly these images)
    mean, logvar (B, L, h, w)   the posterior's mean and clamped log-variance in the
                           pipelines' units: (mean - shift_factor) * scaling_factor and
                           logvar + 2 ln scaling_factor (the variance of the scaled latent)
    latents (B, L, h, w)   decode's input, in those units (standard normal draws)
    decoded (B, C, H, W)   vae.decode(latents / scaling_factor + shift_factor).sample
    __metadata__           diffusers and torch versions, the command

The models (weights random: conv and linear weights normal / sqrt(fan_in), biases
0.05 normal, GroupNorm gammas 1 + 0.1 normal, so that every layer matters):
  small     3 channels 16x16, block_out_channels [8, 16, 16], layers_per_block 2,
            4 latent channels, 4 groups, scaling_factor 0.18215 (diffusers' default)
  switches  1 channel 8x8, [8, 16], layers_per_block 1, 3 latent channels, 4 groups,
            use_quant_conv and use_post_quant_conv false, mid_block_add_attention false,
            scaling_factor 0.3611, shift_factor 0.1159 (the switches of SD3/Flux VAEs)
  sd_like   3 channels 64x64 (--size), [128, 256, 512, 512], layers_per_block 2, 4 latent
            channels, 32 groups, scaling_factor 0.18215 (the Stable Diffusion VAE's shape;
            84 M parameters: not committed)
"""

import argparse
import json
import math
import os
import subprocess
import sys

import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file
import diffusers

HERE = os.path.dirname(os.path.abspath(__file__))
BATCH = 2

MODELS = {
    "small": dict(size=16, seed=11, config=dict(
        in_channels=3, out_channels=3, block_out_channels=[8, 16, 16], layers_per_block=2, latent_channels=4,
        norm_num_groups=4, sample_size=16,
        down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3)),
    "switches": dict(size=8, seed=12, config=dict(
        in_channels=1, out_channels=1, block_out_channels=[8, 16], layers_per_block=1, latent_channels=3,
        norm_num_groups=4, sample_size=8, scaling_factor=0.3611, shift_factor=0.1159,
        use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=False,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2)),
    "sd_like": dict(size=64, seed=13, config=dict(
        in_channels=3, out_channels=3, block_out_channels=[128, 256, 512, 512], layers_per_block=2,
        latent_channels=4, norm_num_groups=32, sample_size=256, scaling_factor=0.18215,
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4)),
}


def randomise(model, gen):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):   # GroupNorm gamma
                v = 1.0 + 0.1 * torch.randn(p.shape, generator=gen)
            elif name.endswith("bias"):
                v = 0.05 * torch.randn(p.shape, generator=gen)
            else:                                            # conv (out, in, k, k), linear (out, in)
                v = torch.randn(p.shape, generator=gen) / p[0].numel() ** 0.5
            p.copy_(v)


def make(name, folder):
    spec = MODELS[name]
    cfg = spec["config"]
    gen = torch.Generator().manual_seed(spec["seed"])
    vae = AutoencoderKL(**cfg).eval()
    randomise(vae, gen)
    os.makedirs(folder, exist_ok=True)
    vae.save_pretrained(folder)  # config.json + diffusion_pytorch_model.safetensors
    s, shift = vae.config.scaling_factor, vae.config.shift_factor or 0.0
    size, channels = spec["size"], cfg["in_channels"]
    pixels = torch.randint(0, 256, (BATCH, channels, size, size), generator=gen)
    images = pixels.float() / 127.5 - 1.0
    with torch.no_grad():
        posterior = vae.encode(images).latent_dist
        mean = (posterior.mean - shift) * s
        logvar = posterior.logvar + 2.0 * math.log(s)
        latents = torch.randn(mean.shape, generator=gen)
        decoded = vae.decode(latents / s + shift).sample
    tensors = {"images": images, "mean": mean, "logvar": logvar, "latents": latents, "decoded": decoded}
    tensors = {k: v.float().contiguous() for k, v in tensors.items()}
    metadata = {"diffusers": diffusers.__version__, "torch": torch.__version__,
                "made_by": "tests/make_diffusers_vae_fixture.py (" + name + ")"}
    save_file(tensors, os.path.join(folder, "expected.safetensors"), metadata=metadata)
    weights = os.path.getsize(os.path.join(folder, "diffusion_pytorch_model.safetensors"))
    print("%s: %s (weights %d bytes), latents %s, |mean| max %.3g, |decoded| max %.3g" % (
        name, folder, weights, tuple(mean.shape), mean.abs().max(), decoded.abs().max()))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sd-like", metavar="DIR", help="write the SD-like model under DIR instead of the fixtures")
    ap.add_argument("--size", type=int, default=64, help="the SD-like check's image size (default 64)")
    ap.add_argument("--check", metavar="TEST_AE_DIFFUSERS", help="then run this test program on what was written")
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.sd_like:
        folders = [os.path.join(args.sd_like, "sd_like")]
        MODELS["sd_like"]["size"] = args.size
        make("sd_like", folders[0])
    else:
        folders = []
        for name in ("small", "switches"):
            folders.append(os.path.join(HERE, "fixtures", "diffusers_vae_" + name))
            make(name, folders[-1])
    if args.check:
        for folder in folders:
            subprocess.run([args.check, folder], check=True)


if __name__ == "__main__":
    sys.exit(main())
