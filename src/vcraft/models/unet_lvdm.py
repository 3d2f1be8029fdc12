"""The UNet of VideoCrafter's first release (April 2023, `lvdm`; the `vc0-256` preset): 5-D throughout.

Unlike the VideoCrafter1/2 UNet (unet3d.py), frames are never folded into the batch: every convolution is a
Conv3d with a (1, 3, 3) kernel, every GroupNorm sees `[b, c, t, h, w]` (its statistics span all frames of the clip),
and each transformer block runs spatial self-attention, temporal self-attention, spatial cross-attention to the
text, a second temporal self-attention and the feed-forward, both temporal attentions with relative positions. No
fps conditioning; 8 heads everywhere. Module and parameter names follow the official checkpoint.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from vcraft.config import UNetConfig
from vcraft.models.attention import Attention, FeedForward, sinusoidal_embedding
from vcraft.models.unet3d import BlockPlan, GroupNorm32, control_by_block


def frame_conv(cin: int, cout: int, stride: int = 1) -> nn.Conv3d:
    """A 3x3 convolution of every frame on its own: a Conv3d with a (1, 3, 3) kernel."""
    return nn.Conv3d(cin, cout, (1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1))


class ResBlock(nn.Module):
    def __init__(self, channels: int, emb_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.in_layers = nn.Sequential(GroupNorm32(groups, channels), nn.SiLU(), frame_conv(channels, out_channels))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(GroupNorm32(groups, out_channels), nn.SiLU(), nn.Dropout(0.0),
                                        frame_conv(out_channels, out_channels))
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv3d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x) + self.emb_layers(emb).to(x.dtype)[:, :, None, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = frame_conv(channels, channels, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = frame_conv(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t, h, w = x.shape[2:]
        return self.conv(F.interpolate(x, (t, h * 2, w * 2), mode="nearest"))


def _frames(x: torch.Tensor) -> torch.Tensor:
    """`[b, c, t, h, w]` -> one sequence of pixels per frame, `[(b t), (h w), c]`."""
    return x.permute(0, 2, 3, 4, 1).flatten(0, 1).flatten(1, 2)


def _from_frames(s: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    b, c, t, h, w = shape
    return s.view(b, t, h, w, c).permute(0, 4, 1, 2, 3)


def _pixels(x: torch.Tensor) -> torch.Tensor:
    """`[b, c, t, h, w]` -> one sequence of frames per pixel, `[(b h w), t, c]`."""
    return x.permute(0, 3, 4, 2, 1).flatten(0, 2)


def _from_pixels(s: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    b, c, t, h, w = shape
    return s.view(b, h, w, t, c).permute(0, 4, 3, 1, 2)


class SpatioTemporalBlock(nn.Module):
    """Spatial self-attention, temporal self-attention, cross-attention to the text, temporal self-attention again,
    feed-forward; pre-norm, each added to its input."""

    def __init__(self, dim: int, heads: int, context_dim: int, temporal_length: int):
        super().__init__()
        head_dim = dim // heads
        self.attn1 = Attention(dim, heads, head_dim)
        self.attn2 = Attention(dim, heads, head_dim, context_dim)
        self.attn1_tmp = Attention(dim, heads, head_dim, relative_length=temporal_length)
        self.attn2_tmp = Attention(dim, heads, head_dim, relative_length=temporal_length)
        self.ff = FeedForward(dim)
        self.norm1, self.norm2, self.norm3, self.norm4, self.norm5 = (nn.LayerNorm(dim) for _ in range(5))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        s = _frames(x)
        x = _from_frames(s + self.attn1(self.norm1(s)), shape)
        s = _pixels(x)
        x = _from_pixels(s + self.attn1_tmp(self.norm4(s)), shape)
        s = _frames(x)
        x = _from_frames(s + self.attn2(self.norm2(s), context.repeat_interleave(shape[2], dim=0)), shape)
        s = _pixels(x)
        s = s + self.attn2_tmp(self.norm5(s))
        return _from_pixels(s + self.ff(self.norm3(s)), shape)


class SpatioTemporalTransformer(nn.Module):
    def __init__(self, channels: int, heads: int, context_dim: int, temporal_length: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Conv3d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList([SpatioTemporalBlock(channels, heads, context_dim, temporal_length)])
        self.proj_out = nn.Conv3d(channels, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        h = self.proj_in(self.norm(x))
        for block in self.transformer_blocks:
            h = block(h, context)
        return x + self.proj_out(h)


class Block(nn.ModuleList):
    """One entry of input_blocks / output_blocks: layers applied in order, each given what it needs."""

    def forward(self, h: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                h = layer(h, emb)
            elif isinstance(layer, SpatioTemporalTransformer):
                h = layer(h, context)
            else:
                h = layer(h)
        return h


class UNetLVDM(nn.Module):
    """Predicts the noise of a video latent `[b, c, t, h, w]` given timesteps and the text context (no fps)."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        mc, groups, heads = cfg.model_channels, cfg.norm_groups, cfg.num_heads
        emb_dim = mc * 4

        def attention(ch: int) -> SpatioTemporalTransformer:
            return SpatioTemporalTransformer(ch, heads, cfg.context_dim, cfg.temporal_length, groups)

        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.input_blocks = nn.ModuleList([Block([frame_conv(cfg.in_channels, mc)])])
        plan = BlockPlan.of(cfg)
        self.level_ends = plan.level_ends
        for step in plan.inputs:
            self.input_blocks.append(Block([Downsample(step.cin)]) if step.down else Block(
                [ResBlock(step.cin, emb_dim, step.cout, groups), *([attention(step.cout)] if step.attention else [])]))
        ch = plan.middle
        self.middle_block = Block([ResBlock(ch, emb_dim, ch, groups), attention(ch), ResBlock(ch, emb_dim, ch, groups)])
        self.output_blocks = nn.ModuleList(Block([
            ResBlock(step.cin, emb_dim, step.cout, groups), *([attention(step.cout)] if step.attention else []),
            *([Upsample(step.cout)] if step.up else [])]) for step in plan.outputs)
        self.out = nn.Sequential(GroupNorm32(groups, plan.outputs[-1].cout), nn.SiLU(),
                                 frame_conv(mc, cfg.out_channels))

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                fps: torch.Tensor | int | None = None, control: Optional[list[torch.Tensor]] = None) -> torch.Tensor:
        """`fps` is accepted and not used: the release has no motion-rate conditioning. `control`: a control
        adapter's features, one per level, added after the level's last input block (before its downsampling)."""
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        emb = self.time_embed(sinusoidal_embedding(t, self.cfg.model_channels).to(x.dtype))
        h, skips, added = x, [], control_by_block(self.level_ends, control)
        for i, block in enumerate(self.input_blocks):
            h = block(h, emb, context)
            if i in added:
                h = h + added[i]
            skips.append(h)
        h = self.middle_block(h, emb, context)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, context)
        return self.out(h)
