"""The KL autoencoder's decoder, for inference, written for memory rather than taken from diffusers.

Two reasons (their measurements: docs/benchmarks.md, "Full-size VideoCrafter2 on a CPU"):
- diffusers' Decoder holds up to three full-resolution activations at once (a block's input, its normalised
  copy and the activated copy); here normalisation and convolutions run over bands of rows, so a ResNet block
  holds only its input and one more activation, into which it writes its output.
- importing diffusers imports torch._dynamo and sympy, resident memory that a process that only
  decodes then never pays (the autoencoder's encoder, which is diffusers', is built only when asked for).

Parameter names are those of diffusers' `Decoder`, so checkpoints and diffusers' AutoencoderKL (used for
training, which needs gradients, see vcraft.train) share one state-dict layout. The same arithmetic as
diffusers' in every layer; only the order of summation differs, within fp32 rounding (tests compare both).
Inference only: activations are overwritten in place.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from vcraft.config import AutoencoderConfig

# Pixels per band of rows (8 rows of a 512-wide frame). On a CPU, bands from 2**12 to 2**14 pixels decode at the
# same speed and the smallest keeps the peak lowest (glibc serves band-sized temporaries from its heap); on a GPU,
# where decoding's memory is small next to the UNet's and every band costs kernel launches, frames up to 1024x1024
# are one band (docs/benchmarks.md).
CPU_BAND_PIXELS = 2 ** 12
GPU_BAND_PIXELS = 2 ** 20

Rows = Callable[[int, int], torch.Tensor]  # rows [lo, hi) of a convolution's input, computed on demand


def _band_rows(x: torch.Tensor) -> int:
    pixels = CPU_BAND_PIXELS if x.device.type == "cpu" else GPU_BAND_PIXELS
    return max(1, pixels // x.shape[-1])


def _group_affine(x: torch.Tensor, norm: nn.GroupNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel scale and shift with `norm(x) == x * scale + shift`, as torch's kernel computes it.

    Each band's mean and variance come from torch.var_mean and are pooled exactly (mean of the band variances
    plus the variance of the band means), so no temporary is larger than a band and nothing cancels."""
    n, c, h, w = x.shape
    rows = _band_rows(x)
    variances, means, weights = [], [], []
    for r in range(0, h, rows):
        band = x[:, :, r:r + rows].unflatten(1, (norm.num_groups, -1)).float()
        var, mean = torch.var_mean(band, dim=(2, 3, 4), correction=0)
        variances.append(var)
        means.append(mean)
        weights.append(band.shape[3] / h)
    weight = torch.tensor(weights, device=x.device)[:, None, None]
    means_ = torch.stack(means)
    mean = (means_ * weight).sum(0)
    var = ((torch.stack(variances) + (means_ - mean).square()) * weight).sum(0)
    per_channel = c // norm.num_groups
    scale = torch.rsqrt(var + norm.eps).repeat_interleave(per_channel, 1) * norm.weight.float()
    shift = norm.bias.float() - mean.repeat_interleave(per_channel, 1) * scale
    return scale[:, :, None, None], shift[:, :, None, None]


def _normalised(x: torch.Tensor, norm: nn.GroupNorm) -> Rows:
    """silu(norm(x)), a band at a time."""
    scale, shift = _group_affine(x, norm)
    return lambda lo, hi: F.silu(torch.addcmul(shift, x[:, :, lo:hi], scale).to(x.dtype), inplace=True)


def _upsampled(x: torch.Tensor) -> Rows:
    """Nearest-neighbour x2, a band at a time: output row i is input row i // 2."""
    return lambda lo, hi: F.interpolate(x[:, :, lo // 2:(hi + 1) // 2], scale_factor=2.0,
                                        mode="nearest")[:, :, lo % 2:lo % 2 + hi - lo]


def _empty(x: torch.Tensor, channels: int, scale: int = 1) -> torch.Tensor:
    n, _, h, w = x.shape
    return torch.empty(n, channels, h * scale, w * scale, dtype=x.dtype, device=x.device,
                       memory_format=torch.channels_last)


def band_conv(cin: int, cout: int) -> nn.Conv2d:
    """A 3x3 convolution for `_conv_bands`: it pads columns only, since a band arrives with its rows above and below
    (zeros at the frame's edges)."""
    return nn.Conv2d(cin, cout, 3, padding=(0, 1))


def _conv_bands(rows_of: Rows, conv: nn.Conv2d, out: torch.Tensor, add: Rows | None = None) -> torch.Tensor:
    """`out` = a 3x3 convolution (a `band_conv`) of an input that exists only as `rows_of`, plus
    `add` if given, computed a band of output rows at a time from its rows and one more above and below.

    Each band is stored only once the next one is computed, which is the last to read its rows (as its halo),
    so `out` may be the very tensor that `rows_of` reads."""
    h = out.shape[2]
    rows = _band_rows(out)
    pending = None
    for r in range(0, h, rows):
        end = min(r + rows, h)
        lo, hi = max(r - 1, 0), min(end + 1, h)
        band = rows_of(lo, hi)
        if lo == r or hi == end:  # the frame's top or bottom edge: its zero padding
            band = F.pad(band, (0, 0, lo - r + 1, end + 1 - hi))
        y = conv(band)
        if add is not None:
            y += add(r, end)
        if pending is not None:
            out[:, :, pending[0]:pending[1]] = pending[2]
        pending = r, end, y
    out[:, :, pending[0]:pending[1]] = pending[2]
    return out


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=1e-6)
        self.cout = cout  # read here, not from conv1: a wrapped layer need not tell
        self.conv1 = band_conv(cin, cout)
        self.norm2 = nn.GroupNorm(groups, cout, eps=1e-6)
        self.conv2 = band_conv(cout, cout)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (projected if the channels differ) + conv2(silu(norm2(conv1(silu(norm1(x)))))), written over
        conv1's output: x and that output are the only whole activations held."""
        def skip(lo: int, hi: int) -> torch.Tensor:
            rows = x[:, :, lo:hi]
            return rows if self.conv_shortcut is None else self.conv_shortcut(rows)

        h = _conv_bands(_normalised(x, self.norm1), self.conv1, _empty(x, self.cout))
        return _conv_bands(_normalised(h, self.norm2), self.conv2, h, add=skip)


class Attention(nn.Module):
    """The middle block's single-head self-attention over the latent grid (small: run whole)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.to_q, self.to_k, self.to_v = (nn.Linear(channels, channels) for _ in range(3))
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        tokens = self.group_norm(x).flatten(2).transpose(1, 2)
        q, k, v = (proj(tokens)[:, None] for proj in (self.to_q, self.to_k, self.to_v))
        out = self.to_out[0](F.scaled_dot_product_attention(q, k, v)[:, 0])
        return x + out.transpose(1, 2).reshape(n, c, h, w)


class MidBlock(nn.Module):
    """Weights only, named as diffusers' (Decoder.forward runs the layers)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, groups) for _ in range(2)])
        self.attentions = nn.ModuleList([Attention(channels, groups)])


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.conv = band_conv(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _conv_bands(_upsampled(x), self.conv, _empty(x, self.channels, scale=2))


class UpBlock(nn.Module):
    """Weights only, named as diffusers' (Decoder.forward runs the layers)."""

    def __init__(self, cin: int, cout: int, layers: int, groups: int, upsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(cin if i == 0 else cout, cout, groups) for i in range(layers)])
        self.upsamplers = nn.ModuleList([Upsample(cout)]) if upsample else nn.ModuleList()


class Decoder(nn.Module):
    """Latents `[n, z, h, w]` to frames `[n, out_ch, 8h, 8w]` (with 4 levels), not clamped."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        channels = [cfg.ch * m for m in reversed(cfg.ch_mult)]
        groups = cfg.norm_groups
        self.conv_in = nn.Conv2d(cfg.embed_dim, channels[0], 3, padding=1)
        self.mid_block = MidBlock(channels[0], groups)
        self.up_blocks = nn.ModuleList([
            UpBlock(channels[max(i - 1, 0)], c, cfg.num_res_blocks + 1, groups, upsample=i < len(channels) - 1)
            for i, c in enumerate(channels)])
        self.conv_norm_out = nn.GroupNorm(groups, channels[-1], eps=1e-6)
        self.out_ch = cfg.out_ch
        self.conv_out = band_conv(channels[-1], cfg.out_ch)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        # The layers run from this one loop, whose `x` is the only reference to the activation between two of
        # them, so each is freed as soon as the next exists: a block's forward calling its layers would keep
        # the block's input alive until its end (a whole full-resolution activation more at the last block).
        mid = self.mid_block
        layers = [mid.resnets[0], mid.attentions[0], mid.resnets[1],
                  *(layer for block in self.up_blocks for layer in (*block.resnets, *block.upsamplers))]
        x = self.conv_in(z.contiguous(memory_format=torch.channels_last))
        for layer in layers:
            x = layer(x)
        out = _empty(x, self.out_ch)
        return _conv_bands(_normalised(x, self.conv_norm_out), self.conv_out, out)
