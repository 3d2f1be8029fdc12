"""Transformer layers of the VideoCrafter UNet: spatial (per frame) and temporal (per pixel) attention.

Module and parameter names follow the official checkpoints so their state dicts load unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def sinusoidal_embedding(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """`[cos(p f), sin(p f)]` over geometric frequencies f from 1 down to 1/10000, computed in float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=positions.device) / half)
    args = positions.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def window_weights(size: int) -> torch.Tensor:
    """FreeNoise's blend weight of each frame of a window: 1, 2, ... up to the middle and back down to 1."""
    half = (size + 1) // 2
    rising = list(range(1, half + 1))
    return torch.tensor(rising + rising[::-1][size % 2:], dtype=torch.float32)


class RelativePosition(nn.Module):
    """Learned embeddings of the clipped offset j - i between two frames (VideoCrafter1)."""

    def __init__(self, head_dim: int, max_offset: int):
        super().__init__()
        self.max_offset = max_offset
        self.embeddings_table = nn.Parameter(torch.empty(2 * max_offset + 1, head_dim))
        nn.init.xavier_uniform_(self.embeddings_table)  # a checkpoint overwrites it; training starts from it

    def forward(self, length: int) -> torch.Tensor:
        pos = torch.arange(length, device=self.embeddings_table.device)
        offset = (pos[None, :] - pos[:, None]).clamp(-self.max_offset, self.max_offset)
        return self.embeddings_table[offset + self.max_offset]  # [i, j, head_dim]


class Attention(nn.Module):
    """Multi-head attention; self-attention when no context is given. With `text_tokens`, the context's tokens
    after the first `text_tokens` are image tokens, attended separately with keys and values of their own
    (`to_k_ip`, `to_v_ip`), and the two results are added."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int | None = None,
                 relative_length: int | None = None, text_tokens: int | None = None):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or dim, inner, bias=False)
        self.text_tokens = text_tokens
        if text_tokens is not None:
            self.to_k_ip = nn.Linear(context_dim or dim, inner, bias=False)
            self.to_v_ip = nn.Linear(context_dim or dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim))  # index 0 as in the checkpoints
        if relative_length is not None:
            self.relative_position_k = RelativePosition(head_dim, relative_length)
            self.relative_position_v = RelativePosition(head_dim, relative_length)
        self.relative = relative_length is not None
        # Overlapping frame windows to attend within and blend (FreeNoise: sampling/freenoise.fused_windows sets
        # them on the temporal attentions); None: all of the sequence at once.
        self.windows: list[tuple[int, int]] | None = None

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
        context = x if context is None else context
        image = None
        if self.text_tokens is not None:
            context, image = context[:, :self.text_tokens], context[:, self.text_tokens:]
        q, k, v = (self._heads(t) for t in (self.to_q(x), self.to_k(context), self.to_v(context)))
        out = self.attend(q, k, v, causal) if self.windows is None else self._fused(q, k, v, causal)
        if image is not None:
            out = out + F.scaled_dot_product_attention(q, self._heads(self.to_k_ip(image)),
                                                       self._heads(self.to_v_ip(image)))
        return self.to_out(out.transpose(1, 2).flatten(2))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
        """Softmax attention of heads `[b, heads, n, d]`."""
        if self.relative:
            return self._relative_attention(q, k, v, causal)
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    def _fused(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
        """Attention within each of `self.windows`, blended with `window_weights`; frames no window covers get
        zeros, as FreeNoise's code gives them."""
        value = torch.zeros_like(q)
        count = torch.zeros(q.shape[2], dtype=torch.float32, device=q.device)
        for start, end in self.windows:
            weight = window_weights(end - start).to(q.device)
            out = self.attend(q[:, :, start:end], k[:, :, start:end], v[:, :, start:end], causal)
            value[:, :, start:end] += out * weight[:, None].to(q.dtype)
            count[start:end] += weight
        count = count[:, None].to(q.dtype)
        return torch.where(count > 0, value / count.clamp(min=1), value)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def _relative_attention(self, q, k, v, causal: bool) -> torch.Tensor:
        # The value-side term needs the attention probabilities themselves, which
        # scaled_dot_product_attention does not expose; the temporal axis is short (16), so this is cheap.
        n = q.shape[-2]
        scale = q.shape[-1] ** -0.5
        rel_k = self.relative_position_k(n).to(q.dtype)
        rel_v = self.relative_position_v(n).to(q.dtype)
        logits = (q @ k.transpose(-1, -2) + torch.einsum("bhid,ijd->bhij", q, rel_k)) * scale
        if causal:
            logits = logits.masked_fill(torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
        probs = logits.softmax(dim=-1)
        return probs @ v + torch.einsum("bhij,ijd->bhid", probs, rel_v)


class GEGLU(nn.Module):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        # nn.Identity keeps the checkpoint's indices (net.0, net.2): a dropout sat at index 1.
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Identity(), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TransformerBlock(nn.Module):
    """Pre-norm block: attention, second attention (cross, or self when context_dim is None), GEGLU MLP."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int | None,
                 relative_length: int | None = None, text_tokens: int | None = None):
        super().__init__()
        # Registered in the original's order (attn1, ff, attn2), which T2V-Turbo's LoRA file follows.
        self.attn1 = Attention(dim, heads, head_dim, relative_length=relative_length)
        self.ff = FeedForward(dim)
        self.attn2 = Attention(dim, heads, head_dim, context_dim, relative_length, text_tokens)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x), causal=causal)
        x = x + self.attn2(self.norm2(x), context, causal=causal and context is None)
        return x + self.ff(self.norm3(x))


class PointwiseConv1d(nn.Conv1d):
    """A 1x1 Conv1d over `[n, channels, length]`, computed as the matrix product it is: on the temporal axis's short
    sequences the convolution kernel is slower, and given a transposed view of tokens this costs no copy."""

    def __init__(self, cin: int, cout: int):
        super().__init__(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.transpose(1, 2), self.weight.squeeze(-1), self.bias).transpose(1, 2)


class SpatialTransformer(nn.Module):
    """Attention over the pixels of each frame, with cross-attention to the text (and to image tokens after
    `text_tokens` text tokens, when given)."""

    def __init__(self, channels: int, heads: int, head_dim: int, depth: int, context_dim: int, use_linear: bool,
                 groups: int = 32, text_tokens: int | None = None):
        super().__init__()
        inner = heads * head_dim
        self.use_linear = use_linear
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner) if use_linear else nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            TransformerBlock(inner, heads, head_dim, context_dim, text_tokens=text_tokens) for _ in range(depth)
        )
        self.proj_out = nn.Linear(inner, channels) if use_linear else nn.Conv2d(inner, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape  # n = batch * frames
        # Each projection gets its own layout (a Linear tokens, a 1x1 convolution images), so a wrapped one works.
        if self.use_linear:
            tokens = self.proj_in(self.norm(x).flatten(2).transpose(1, 2))
        else:
            tokens = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)
        for block in self.transformer_blocks:
            tokens = block(tokens, context)
        if self.use_linear:
            return x + self.proj_out(tokens).transpose(1, 2).reshape(n, c, h, w)
        return x + self.proj_out(tokens.transpose(1, 2).reshape(n, -1, h, w))


class TemporalTransformer(nn.Module):
    """Attention along time, independently at every latent pixel.

    Only the self-attention form is built: every official config sets `temporal_selfatt_only`.
    `frame_positions` adds a sinusoidal embedding of each frame's index to its tokens, as AnimateDiff's
    motion modules do; VideoCrafter has none, and its attention alone cannot tell frames apart.
    """

    def __init__(self, channels: int, heads: int, head_dim: int, depth: int, use_linear: bool,
                 relative_length: int | None = None, causal: bool = False, groups: int = 32,
                 frame_positions: bool = False):
        super().__init__()
        inner = heads * head_dim
        self.causal = causal
        self.frame_positions = frame_positions
        self.use_linear = use_linear
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner) if use_linear else PointwiseConv1d(channels, inner)
        self.transformer_blocks = nn.ModuleList(
            TransformerBlock(inner, heads, head_dim, None, relative_length) for _ in range(depth)
        )
        self.proj_out = nn.Linear(inner, channels) if use_linear else PointwiseConv1d(inner, channels)

    def forward(self, x: torch.Tensor, batch: int) -> torch.Tensor:
        n, c, h, w = x.shape
        t = n // batch
        video = self.norm(x.view(batch, t, c, h, w).transpose(1, 2))  # GroupNorm statistics span all frames
        tokens = video.permute(0, 3, 4, 2, 1).reshape(batch * h * w, t, c)
        # As in SpatialTransformer, each projection gets its own layout: a convolution channels first.
        tokens = self.proj_in(tokens) if self.use_linear else self.proj_in(tokens.transpose(1, 2)).transpose(1, 2)
        if self.frame_positions:
            tokens = tokens + sinusoidal_embedding(torch.arange(t, device=x.device), tokens.shape[-1]).to(tokens.dtype)
        for block in self.transformer_blocks:
            tokens = block(tokens, causal=self.causal)
        tokens = self.proj_out(tokens) if self.use_linear else self.proj_out(tokens.transpose(1, 2)).transpose(1, 2)
        return x + tokens.view(batch, h, w, t, c).permute(0, 3, 4, 1, 2).reshape(n, c, h, w)
