"""Reference DiT (adaLN-Zero) in PyTorch, used to make fixtures and to benchmark.

Written from the description in Peebles & Xie, "Scalable Diffusion Models with
Transformers" (2023). Parameter names and shapes match the state_dict of the public
facebookresearch DiT code with learn_sigma=False (out_channels = in_channels), so a
checkpoint written by `ldm` loads here (and there) with load_state_dict:

    pos_embed                                (1, T, hidden)   fixed 2-D sin-cos, not trained
    x_embedder.proj.{weight,bias}            Conv2d(in_ch, hidden, p, stride p)
    t_embedder.mlp.{0,2}.{weight,bias}       Linear(256, hidden), SiLU, Linear(hidden, hidden)
    y_embedder.embedding_table.weight        (num_classes + 1, hidden), last row = null class
    blocks.N.attn.qkv / attn.proj            Linear(hidden, 3*hidden) / Linear(hidden, hidden)
    blocks.N.mlp.fc1 / mlp.fc2               Linear(hidden, hidden*mlp_ratio) / back
    blocks.N.adaLN_modulation.1              Linear(hidden, 6*hidden)
    final_layer.adaLN_modulation.1           Linear(hidden, 2*hidden)
    final_layer.linear                       Linear(hidden, p*p*out_ch)

Works in float32 and float64 (model.to(torch.float64)). Needs only torch and numpy;
runs with Debian's python3-torch 1.13 as well as a current PyPI torch.
"""

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

FREQ_EMBED_SIZE = 256


# ----------------------------------------------------------------------------
# Fixed embeddings


GUIDANCE_EMBEDDING_SCALE = 1000.0  # ldm's DIT_GUIDANCE_EMBEDDING_SCALE


def sincos_1d(embed_dim, pos):
    """1-D sin-cos embedding (MAE/DiT): pos any shape -> (pos.size, embed_dim), float64."""
    assert embed_dim % 2 == 0
    omega = np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000 ** omega
    out = np.outer(pos.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d(embed_dim, grid_size):
    """2-D sin-cos embedding for a grid_size x grid_size grid -> (grid_size**2, embed_dim).

    As in MAE/DiT: the meshgrid is built w first ('xy' indexing), so grid[0] varies along
    the width; its half of the channels comes first (called emb_h in the original code).
    """
    assert embed_dim % 2 == 0
    gh = np.arange(grid_size, dtype=np.float64)
    gw = np.arange(grid_size, dtype=np.float64)
    grid = np.stack(np.meshgrid(gw, gh), axis=0)  # (2, g, g)
    emb_h = sincos_1d(embed_dim // 2, grid[0])
    emb_w = sincos_1d(embed_dim // 2, grid[1])
    return np.concatenate([emb_h, emb_w], axis=1)


def timestep_frequencies(t, dim=FREQ_EMBED_SIZE, max_period=10000):
    """Sinusoidal timestep embedding [cos | sin], computed in float64.

    Computed in float64 on purpose and cast by the caller: in float32, t * freq at
    |t| ~ 1000 is rounded to ~6e-5 (half an ulp of 1000), so cos/sin move by up to ~1e-4
    absolute -- more than the tolerances of the fixtures this model produces. float64
    makes the embedding exact to the fixture's precision whatever the model dtype.
    """
    half = dim // 2
    t64 = t.to(torch.float64)
    freqs = torch.exp(-math.log(max_period)
                      * torch.arange(half, dtype=torch.float64, device=t.device) / half)
    args = t64[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def modulate(x, shift, scale):
    return x * (1 + scale[:, None]) + shift[:, None]


# ----------------------------------------------------------------------------
# Modules (attribute names define the state_dict names)


class PatchEmbed(nn.Module):
    def __init__(self, in_ch, hidden, patch):
        super().__init__()
        self.proj = nn.Conv2d(in_ch, hidden, kernel_size=patch, stride=patch, bias=True)

    def forward(self, x):
        x = self.proj(x)                      # (N, hidden, gh, gw)
        return x.flatten(2).transpose(1, 2)   # (N, T, hidden), row-major grid order


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden, freq_size=FREQ_EMBED_SIZE):
        super().__init__()
        self.freq_size = freq_size
        self.mlp = nn.Sequential(nn.Linear(freq_size, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden))

    def forward(self, t):
        f = timestep_frequencies(t, self.freq_size).to(self.mlp[0].weight.dtype)
        return self.mlp(f)


class LabelEmbedder(nn.Module):
    """Class embedding; row num_classes is the null class (classifier-free guidance).

    Label dropout is the trainer's business: pass y = num_classes for a dropped label.
    """

    def __init__(self, num_classes, hidden):
        super().__init__()
        self.num_classes = num_classes
        self.embedding_table = nn.Embedding(num_classes + 1, hidden)

    def forward(self, y):
        return self.embedding_table(y)


class Attention(nn.Module):
    def __init__(self, hidden, heads):
        super().__init__()
        assert hidden % heads == 0
        self.heads = heads
        self.head_dim = hidden // heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(hidden, 3 * hidden, bias=True)
        self.proj = nn.Linear(hidden, hidden)

    def forward(self, x):
        B, T, C = x.shape
        qkv = self.qkv(x).reshape(B, T, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]                 # (B, heads, T, head_dim)
        att = (q @ k.transpose(-2, -1)) * self.scale     # (B, heads, T, T)
        att = att.softmax(dim=-1)
        o = (att @ v).transpose(1, 2).reshape(B, T, C)   # heads concatenated
        return self.proj(o)


class Mlp(nn.Module):
    def __init__(self, hidden, mlp_hidden):
        super().__init__()
        self.fc1 = nn.Linear(hidden, mlp_hidden)
        self.fc2 = nn.Linear(mlp_hidden, hidden)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class DiTBlock(nn.Module):
    def __init__(self, hidden, heads, mlp_ratio):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden, heads)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden, int(hidden * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))

    def forward(self, x, c):
        (shift_msa, scale_msa, gate_msa,
         shift_mlp, scale_mlp, gate_mlp) = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa[:, None] * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        x = x + gate_mlp[:, None] * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class FinalLayer(nn.Module):
    def __init__(self, hidden, patch, out_ch):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden, patch * patch * out_ch)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    def __init__(self, input_size=8, in_channels=4, patch_size=1, hidden_size=384,
                 depth=12, num_heads=6, mlp_ratio=4.0, num_classes=10, guidance_input=False):
        super().__init__()
        assert input_size % patch_size == 0
        self.input_size = input_size
        self.in_channels = in_channels
        self.out_channels = in_channels   # learn_sigma = False
        self.patch_size = patch_size
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.num_classes = num_classes
        self.grid = input_size // patch_size
        num_tokens = self.grid * self.grid

        self.x_embedder = PatchEmbed(in_channels, hidden_size, patch_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, hidden_size),
                                      requires_grad=False)
        self.blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads, mlp_ratio)
                                     for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        # A guidance-scale input as in Latent Consistency Models: w enters like a
        # timestep, as 1000 w, through its own MLP added to the conditioning.
        self.w_embedder = TimestepEmbedder(hidden_size) if guidance_input else None
        self.reset_pos_embed()

    def reset_pos_embed(self):
        pe = sincos_2d(self.hidden_size, self.grid)
        with torch.no_grad():
            self.pos_embed.copy_(torch.from_numpy(pe)[None].to(self.pos_embed.dtype))

    def initialize_weights(self):
        """The DiT paper's initialisation (adaLN-Zero): the model starts as the identity
        on the residual stream and outputs zeros."""
        def basic(m):
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self.apply(basic)
        self.reset_pos_embed()
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for blk in self.blocks:
            nn.init.zeros_(blk.adaLN_modulation[-1].weight)
            nn.init.zeros_(blk.adaLN_modulation[-1].bias)
        fl = self.final_layer
        nn.init.zeros_(fl.adaLN_modulation[-1].weight)
        nn.init.zeros_(fl.adaLN_modulation[-1].bias)
        nn.init.zeros_(fl.linear.weight)
        nn.init.zeros_(fl.linear.bias)
        return self

    def unpatchify(self, x):
        """(N, T, p*p*c) -> (N, c, H, W)."""
        c, p, h = self.out_channels, self.patch_size, self.grid
        x = x.reshape(x.shape[0], h, h, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, h * p, h * p)

    def forward(self, x, t, y, w=None):
        """x: (N, C, H, W); t: (N,) time input (here 250 ln sigma); y: (N,) int labels;
        w: (N,) guidance scales, for a model with a guidance input."""
        x = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(t) + self.y_embedder(y)
        if self.w_embedder is not None:
            c = c + self.w_embedder(GUIDANCE_EMBEDDING_SCALE * w)
        for blk in self.blocks:
            x = blk(x, c)
        x = self.final_layer(x, c)
        return self.unpatchify(x)


def weighted_mse(out, target, weight):
    """(1/B) sum_b w_b * mean_j (out_bj - target_bj)^2."""
    per = ((out - target) ** 2).flatten(1).mean(dim=1)
    return (weight * per).sum() / out.shape[0]


SMALL_CONFIG = dict(input_size=8, in_channels=4, patch_size=2, hidden_size=64, depth=2,
                    num_heads=4, mlp_ratio=4.0, num_classes=10)
DIT_S_CONFIG = dict(input_size=8, in_channels=4, patch_size=1, hidden_size=384, depth=12,
                    num_heads=6, mlp_ratio=4.0, num_classes=10)
