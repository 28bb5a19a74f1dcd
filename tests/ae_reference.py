"""Reference KL autoencoder (Stable Diffusion / LDM first stage) in PyTorch, for fixtures.

Written from the published design (Rombach et al. 2022, "High-Resolution Image Synthesis
with Latent Diffusion Models", first stage) with the module structure and semantics of
diffusers' AutoencoderKL (Encoder, Decoder, ResnetBlock2D, Attention, Downsample2D,
Upsample2D, DiagonalGaussianDistribution), so that the state_dict names and shapes are
exactly diffusers', e.g. for block_out_channels [C0, C1, ...], L latent channels:

    encoder.conv_in                                  Conv2d(in, C0, 3, pad 1)
    encoder.down_blocks.i.resnets.j.{norm1,conv1,norm2,conv2[,conv_shortcut]}
    encoder.down_blocks.i.downsamplers.0.conv        Conv2d(Ci, Ci, 3, stride 2), input padded (0,1,0,1)
    encoder.mid_block.resnets.{0,1}.*                ResnetBlock2D(Clast, Clast)
    encoder.mid_block.attentions.0.{group_norm,to_q,to_k,to_v,to_out.0}   one head, Linear with bias
    encoder.conv_norm_out, encoder.conv_out          GroupNorm(Clast), Conv2d(Clast, 2L, 3, pad 1)
    quant_conv                                       Conv2d(2L, 2L, 1)
    post_quant_conv                                  Conv2d(L, L, 1)
    decoder.conv_in                                  Conv2d(L, Clast, 3, pad 1)
    decoder.mid_block.*                              as the encoder's
    decoder.up_blocks.i.resnets.j.*                  reversed widths, layers_per_block + 1 resnets
    decoder.up_blocks.i.upsamplers.0.conv            nearest 2x, then Conv2d(c, c, 3, pad 1)
    decoder.conv_norm_out, decoder.conv_out          GroupNorm(C0), Conv2d(C0, in, 3, pad 1)

ResnetBlock2D: h = conv1(SiLU(norm1(x))); h = conv2(SiLU(norm2(h))) (dropout 0);
out = shortcut(x) + h, shortcut a 1x1 conv when in != out channels (output scale 1).
Down block i has layers_per_block resnets and a downsampler unless it is the last; up
block i (widths reversed) has layers_per_block + 1 resnets and an upsampler unless it is
the last. Every GroupNorm has eps 1e-6. Attention: x + to_out(softmax(q k^T / sqrt(C)) v)
with q, k, v = to_q/k/v(group_norm(x)) over the H*W tokens.

The posterior (DiagonalGaussianDistribution): mean, logvar = chunk(quant_conv(h), 2, dim=1),
logvar clamped to [-30, 20]; std = exp(logvar / 2); z = mean + std * noise.
KL = 0.5 * sum(mean^2 + var - 1 - logvar) / batch (summed over C, H, W, averaged over the
batch: the LDM convention, kl_loss = sum(kl) / kl.shape[0]).

Works in float32 and float64. Needs only torch and numpy (Debian's python3-torch 1.13).
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

GROUPNORM_EPS = 1e-6
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0

TINY_CONFIG = dict(in_channels=3, input_size=16, block_out_channels=[8, 16, 16],
                   layers_per_block=1, latent_channels=2, norm_groups=4)


class ResnetBlock2D(nn.Module):
    def __init__(self, in_channels, out_channels, groups):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=GROUPNORM_EPS, affine=True)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=1, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=GROUPNORM_EPS, affine=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1)
        self.conv_shortcut = (nn.Conv2d(in_channels, out_channels, 1, stride=1, padding=0)
                              if in_channels != out_channels else None)

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        shortcut = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        return shortcut + h


class Attention(nn.Module):
    """diffusers' Attention as the VAE mid block builds it: one head of width C,
    GroupNorm first, residual connection, rescale factor 1."""

    def __init__(self, channels, groups):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=GROUPNORM_EPS, affine=True)
        self.to_q = nn.Linear(channels, channels, bias=True)
        self.to_k = nn.Linear(channels, channels, bias=True)
        self.to_v = nn.Linear(channels, channels, bias=True)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels, bias=True), nn.Dropout(0.0)])

    def forward(self, x):
        b, c, h, w = x.shape
        tokens = self.group_norm(x).reshape(b, c, h * w).transpose(1, 2)   # (B, HW, C)
        q, k, v = self.to_q(tokens), self.to_k(tokens), self.to_v(tokens)
        probs = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(c), dim=-1)
        out = self.to_out[1](self.to_out[0](probs @ v))                   # (B, HW, C)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class Downsample2D(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class Upsample2D(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=1, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class DownEncoderBlock2D(nn.Module):
    def __init__(self, in_channels, out_channels, layers, groups, add_downsample):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(in_channels if j == 0 else out_channels, out_channels, groups)
                                      for j in range(layers)])
        self.downsamplers = nn.ModuleList([Downsample2D(out_channels)]) if add_downsample else None

    def forward(self, x):
        for r in self.resnets:
            x = r(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
        return x


class UpDecoderBlock2D(nn.Module):
    def __init__(self, in_channels, out_channels, layers, groups, add_upsample):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(in_channels if j == 0 else out_channels, out_channels, groups)
                                      for j in range(layers)])
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels)]) if add_upsample else None

    def forward(self, x):
        for r in self.resnets:
            x = r(x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class UNetMidBlock2D(nn.Module):
    def __init__(self, channels, groups):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(channels, channels, groups) for _ in range(2)])
        self.attentions = nn.ModuleList([Attention(channels, groups)])

    def forward(self, x):
        x = self.resnets[0](x)
        x = self.attentions[0](x)
        return self.resnets[1](x)


class Encoder(nn.Module):
    def __init__(self, in_channels, block_out_channels, layers_per_block, latent_channels, norm_groups):
        super().__init__()
        widths = list(block_out_channels)
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1)
        blocks = []
        previous = widths[0]
        for i, w in enumerate(widths):
            blocks.append(DownEncoderBlock2D(previous, w, layers_per_block, norm_groups,
                                             add_downsample=i != len(widths) - 1))
            previous = w
        self.down_blocks = nn.ModuleList(blocks)
        self.mid_block = UNetMidBlock2D(widths[-1], norm_groups)
        self.conv_norm_out = nn.GroupNorm(norm_groups, widths[-1], eps=GROUPNORM_EPS, affine=True)
        self.conv_out = nn.Conv2d(widths[-1], 2 * latent_channels, 3, padding=1)

    def forward(self, x):
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class Decoder(nn.Module):
    def __init__(self, out_channels, block_out_channels, layers_per_block, latent_channels, norm_groups):
        super().__init__()
        widths = list(reversed(block_out_channels))
        self.conv_in = nn.Conv2d(latent_channels, widths[0], 3, stride=1, padding=1)
        self.mid_block = UNetMidBlock2D(widths[0], norm_groups)
        blocks = []
        previous = widths[0]
        for i, w in enumerate(widths):
            blocks.append(UpDecoderBlock2D(previous, w, layers_per_block + 1, norm_groups,
                                           add_upsample=i != len(widths) - 1))
            previous = w
        self.up_blocks = nn.ModuleList(blocks)
        self.conv_norm_out = nn.GroupNorm(norm_groups, widths[-1], eps=GROUPNORM_EPS, affine=True)
        self.conv_out = nn.Conv2d(widths[-1], out_channels, 3, padding=1)

    def forward(self, z):
        x = self.conv_in(z)
        x = self.mid_block(x)
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class AutoencoderKL(nn.Module):
    def __init__(self, in_channels=3, input_size=32, block_out_channels=(64, 128, 128), layers_per_block=1,
                 latent_channels=4, norm_groups=32):
        super().__init__()
        self.input_size = input_size
        self.latent_channels = latent_channels
        self.encoder = Encoder(in_channels, block_out_channels, layers_per_block, latent_channels, norm_groups)
        self.decoder = Decoder(in_channels, block_out_channels, layers_per_block, latent_channels, norm_groups)
        self.quant_conv = nn.Conv2d(2 * latent_channels, 2 * latent_channels, 1)
        self.post_quant_conv = nn.Conv2d(latent_channels, latent_channels, 1)

    def encode(self, images):
        """-> mean, logvar (B, L, h, w), logvar clamped as diffusers does."""
        moments = self.quant_conv(self.encoder(images))
        mean, logvar = torch.chunk(moments, 2, dim=1)
        return mean, torch.clamp(logvar, LOGVAR_MIN, LOGVAR_MAX)

    def decode(self, z):
        return self.decoder(self.post_quant_conv(z))


def kl_divergence(mean, logvar):
    """0.5 * sum(mean^2 + var - 1 - logvar) over everything, divided by the batch."""
    return 0.5 * torch.sum(mean ** 2 + torch.exp(logvar) - 1.0 - logvar) / mean.shape[0]


def reconstruction_loss(reconstruction, images, kind):
    diff = reconstruction - images
    return diff.abs().mean() if kind == "l1" else (diff ** 2).mean()


def training_loss(model, images, noise, kl_beta, kind):
    """One training step's forward: -> total, reconstruction, kl, and the tensors on the way.
    noise None decodes the mean (sample_posterior false)."""
    mean, logvar = model.encode(images)
    z = mean if noise is None else mean + torch.exp(0.5 * logvar) * noise
    reconstruction = model.decode(z)
    rec = reconstruction_loss(reconstruction, images, kind)
    kl = kl_divergence(mean, logvar)
    return rec + kl_beta * kl, rec, kl, dict(mean=mean, logvar=logvar, z=z, reconstruction=reconstruction)
