"""Make tests/fixtures/ae_tiny.safetensors: a PyTorch reference for ldm's KL autoencoder.

Regenerate (from the repository root, with Debian's python3-torch and numpy):

    /usr/bin/python3 tests/make_ae_fixture.py            # writes the fixture, checks it
    /usr/bin/python3 tests/make_ae_fixture.py --out F    # somewhere else

The model is tests/ae_reference.py's AutoencoderKL with TINY_CONFIG (3 channels, 16x16,
block_out_channels [8, 16, 16], layers_per_block 1, 2 latent channels, 4 GroupNorm groups:
latents 2x4x4), run in float64. Every parameter gets deterministic random values (GroupNorm
gammas near 1, biases small but nonzero, so that every gradient is nonzero); all values are
rounded to float32 before use, so the F32 tensors in the file are exactly the weights and
inputs the float64 reference computed with. The logvar channel 1 of quant_conv gets a bias
of -30.25, so that about half of its values fall below the clamp at -30 (gradient zero there)
and half do not: the fixture checks the clamp from both sides.

The training loss (the LDM convention, stated in ae_reference.py):
    loss = reconstruction + kl_beta * KL,
    reconstruction = mean |x - decode(z)| (L1) or mean (x - decode(z))^2 (L2),
    KL = 0.5 * sum over (C, h, w) and the batch of (mean^2 + var - 1 - logvar) / batch,
    z = mean + exp(logvar / 2) * noise (sample_posterior), or z = mean.
kl_beta is 1e-3 here, not the config's 1e-6, so that the KL term's share of the
encoder's gradients is of the same order as the reconstruction's and a mistake in
either shows.

Contents (all F32):
  <state_dict name>         the weights, diffusers AutoencoderKL names
  input.images (2,3,16,16)  in [-1, 1]
  input.noise (2,2,4,4)     the posterior noise
  input.kl_beta (1,)
  posterior.mean, posterior.logvar (2,2,4,4)   logvar after the clamp
  latent (2,2,4,4)          z = mean + std * noise
  reconstruction (2,3,16,16)
  loss (3,)                 total, reconstruction (L1), KL
  grad.<name>               d loss / d param, every parameter (the to_k biases' true gradient
                            is zero: softmax ignores a shift shared by a row's scores)
  grad.images               d loss / d images
  l2_mean.*                 the other loss variant: L2 reconstruction, z = mean (no noise):
    l2_mean.loss (3,), l2_mean.reconstruction, l2_mean.grad.images, and
    l2_mean.grad.<name> for every parameter of at most 1024 values (to keep the file small)
  __metadata__              config (JSON), sd_vae_tensors (JSON list of [name, shape] of
                            the Stable Diffusion VAE shape: block_out_channels
                            [128, 256, 512, 512], layers_per_block 2, 4 latent channels,
                            32 groups), generator, torch version

The safetensors writer is make_dit_fixture.py's.
"""

import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ae_reference import AutoencoderKL, TINY_CONFIG, LOGVAR_MIN, LOGVAR_MAX, training_loss  # noqa: E402
from make_dit_fixture import write_safetensors, read_safetensors, f32_exact, rel_diff  # noqa: E402

SEED = 4321
BATCH = 2
KL_BETA = 1e-3
SMALL_GRADIENT_NUMEL = 1024
SD_VAE_CONFIG = dict(in_channels=3, input_size=512, block_out_channels=[128, 256, 512, 512],
                     layers_per_block=2, latent_channels=4, norm_groups=32)


def randomise(model, gen):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):      # GroupNorm gamma
                v = 1.0 + 0.1 * torch.randn(p.shape, generator=gen, dtype=torch.float64)
            elif name.endswith("bias"):
                v = 0.05 * torch.randn(p.shape, generator=gen, dtype=torch.float64)
            else:                                               # conv (out, in, k, k), linear (out, in)
                fan_in = p[0].numel()
                v = torch.randn(p.shape, generator=gen, dtype=torch.float64) / fan_in ** 0.5
            p.copy_(f32_exact(v))
        latent = model.latent_channels
        model.quant_conv.bias[latent + 1] = -30.25


def run(model, images, noise, kind):
    model.zero_grad(set_to_none=True)
    images = images.clone().requires_grad_(True)
    total, rec, kl, parts = training_loss(model, images, noise, KL_BETA, kind)
    total.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    grads["images"] = images.grad.detach().clone()
    losses = torch.stack([total, rec, kl]).detach()
    return losses, {k: v.detach() for k, v in parts.items()}, grads


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                  "fixtures", "ae_tiny.safetensors"))
    args = ap.parse_args()

    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    model = AutoencoderKL(**TINY_CONFIG).to(torch.float64)
    randomise(model, gen)
    size, latent_size = TINY_CONFIG["input_size"], TINY_CONFIG["input_size"] // 4
    channels, latent = TINY_CONFIG["in_channels"], TINY_CONFIG["latent_channels"]
    images = f32_exact(torch.rand(BATCH, channels, size, size, generator=gen, dtype=torch.float64) * 2 - 1)
    noise = f32_exact(torch.randn(BATCH, latent, latent_size, latent_size, generator=gen, dtype=torch.float64))
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    losses, parts, grads = run(model, images, noise, "l1")
    losses2, parts2, grads2 = run(model, images, None, "l2")

    # The clamp must be tested from both sides, and no value may sit so close to
    # it that float32 rounding could put it on the other side.
    with torch.no_grad():
        moments = model.quant_conv(model.encoder(images))
        raw_logvar = moments[:, latent:]
    clamped = (raw_logvar < LOGVAR_MIN) | (raw_logvar > LOGVAR_MAX)
    assert 0 < clamped.sum().item() < clamped.numel() // 2 + clamped.numel() // 4, clamped.sum().item()
    margin = torch.minimum((raw_logvar - LOGVAR_MIN).abs(), (raw_logvar - LOGVAR_MAX).abs()).min().item()
    assert margin > 1e-3, margin
    # Every gradient nonzero, else the fixture cannot catch a missing term; but
    # to_k's bias adds q . b_k to every score of a query's row, which softmax
    # ignores: its true gradient is zero (here float64 rounding, ~1e-20).
    scale = max(g.abs().max().item() for g in grads.values())
    for n, g in list(grads.items()) + list(grads2.items()):
        if n.endswith("to_k.bias"):
            assert g.abs().max().item() < 1e-12 * scale, n
        else:
            assert g.abs().max().item() > 1e-6 * scale, "(nearly) zero gradient: " + n
    # The KL term's share of the encoder's gradient: comparable to the reconstruction's.
    model.zero_grad(set_to_none=True)
    _, rec_only, kl_only, _ = training_loss(model, images, noise, KL_BETA, "l1")
    g_rec = torch.autograd.grad(rec_only, model.quant_conv.weight, retain_graph=True)[0]
    g_kl = torch.autograd.grad(KL_BETA * kl_only, model.quant_conv.weight)[0]
    share = g_kl.abs().max().item() / g_rec.abs().max().item()

    # Cross-check: the same weights in float32, the floor of what float32 can reach.
    m32 = AutoencoderKL(**TINY_CONFIG)
    m32.load_state_dict({k: v.to(torch.float32) for k, v in state.items()})
    l32, p32, g32 = run(m32, images.float(), noise.float(), "l1")
    d_rec = rel_diff(p32["reconstruction"], parts["reconstruction"])
    checked = [n for n in grads if not n.endswith("to_k.bias")]
    d_grad = max(rel_diff(g32[n], grads[n]) for n in checked)
    worst = max(checked, key=lambda n: rel_diff(g32[n], grads[n]))

    tensors = {k: v.to(torch.float32).numpy() for k, v in state.items()}
    f32 = lambda t: t.to(torch.float32).numpy()  # noqa: E731
    tensors["input.images"] = f32(images)
    tensors["input.noise"] = f32(noise)
    tensors["input.kl_beta"] = np.array([KL_BETA], np.float32)
    tensors["posterior.mean"] = f32(parts["mean"])
    tensors["posterior.logvar"] = f32(parts["logvar"])
    tensors["latent"] = f32(parts["z"])
    tensors["reconstruction"] = f32(parts["reconstruction"])
    tensors["loss"] = f32(losses)
    for n, g in grads.items():
        tensors["grad." + n] = f32(g)
    tensors["l2_mean.loss"] = f32(losses2)
    tensors["l2_mean.reconstruction"] = f32(parts2["reconstruction"])
    for n, g in grads2.items():
        if n == "images" or g.numel() <= SMALL_GRADIENT_NUMEL:
            tensors["l2_mean.grad." + n] = f32(g)

    sd = AutoencoderKL(**SD_VAE_CONFIG)
    sd_tensors = [[k, list(v.shape)] for k, v in sd.state_dict().items()]
    metadata = {"config": json.dumps(TINY_CONFIG, sort_keys=True),
                "kl_beta": repr(KL_BETA),
                "sd_vae_config": json.dumps(SD_VAE_CONFIG, sort_keys=True),
                "sd_vae_tensors": json.dumps(sd_tensors, separators=(",", ":")),
                "generator": "tests/make_ae_fixture.py",
                "torch": torch.__version__}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_safetensors(args.out, tensors, metadata)

    # Read back and compare: the weights reload into the reference and give the same output.
    back, meta = read_safetensors(args.out)
    assert meta == metadata and sorted(back) == sorted(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape and np.array_equal(back[k], v), k
    m_back = AutoencoderKL(**TINY_CONFIG).to(torch.float64)
    m_back.load_state_dict({k: torch.from_numpy(back[k]).to(torch.float64) for k in state}, strict=True)
    with torch.no_grad():
        mean_back, _ = m_back.encode(torch.from_numpy(back["input.images"]).double())
    assert torch.equal(mean_back, parts["mean"]), "reloaded weights give another posterior"

    size_bytes = os.path.getsize(args.out)
    assert size_bytes < 1024 * 1024, size_bytes
    n_params = sum(p.numel() for p in model.parameters())
    print("wrote %s: %d tensors, %d bytes, %d parameters (SD VAE shape: %d tensors, %d parameters)"
          % (args.out, len(tensors), size_bytes, n_params, len(sd_tensors),
             sum(p.numel() for p in sd.parameters())))
    print("l1 + kl: loss %.9g = %.9g + %g * %.9g; l2, z = mean: %.9g = %.9g + %g * %.9g"
          % (losses[0], losses[1], KL_BETA, losses[2], losses2[0], losses2[1], KL_BETA, losses2[2]))
    print("logvar values clamped: %d of %d (closest to a bound: %.3g away); KL/reconstruction share of "
          "quant_conv.weight's gradient: %.3g" % (clamped.sum().item(), clamped.numel(), margin, share))
    print("reconstruction std %.4g, max |mean| %.4g" % (parts["reconstruction"].std().item(),
                                                         parts["mean"].abs().max().item()))
    print("float32 vs float64 (max|a-b|/max|b|): reconstruction %.3g  loss %.3g  grads %.3g (worst %s; "
          "to_k.bias left out)"
          % (d_rec, rel_diff(l32, losses), d_grad, worst))


if __name__ == "__main__":
    main()
