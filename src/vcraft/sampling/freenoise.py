"""FreeNoise (Qiu et al., "Tuning-Free Longer Video Diffusion via Noise Rescheduling"): a video longer than the
model's clip made in one sampler run over all its frames, with the unchanged weights.

- Noise rescheduling (`reschedule`): past the first window, each block of `stride` frames starts from a shuffled
  copy of the block `window` frames earlier, so every frame's noise is one of the first window's.
- Window fusion (`fused_windows`): every temporal self-attention runs on overlapping windows of `window` frames and
  blends their outputs with triangular weights; every other layer sees all frames.
- Prompts along the video (`frame_contexts`): a per-frame text embedding ramping from one prompt to the next, and
  "motion injection" (`injection_steps`): the input and middle blocks see the last prompt in every frame at the
  first and late steps of the conditional pass.
"""

from __future__ import annotations

import math
import random
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch

from vcraft.models.attention import TemporalTransformer

Window = tuple[int, int]  # [start, end) frames


def windows(frames: int, window: int, stride: int) -> list[Window]:
    """The overlapping windows over `frames` frames: `(i * stride, i * stride + window)`."""
    return [(i * stride, i * stride + window) for i in range((frames - window) // stride + 1)]


def tiled_frames(frames: int, window: int, stride: int) -> int:
    """The fewest frames, at least `frames`, that windows of `window` every `stride` frames tile exactly."""
    return window + math.ceil(max(0, frames - window) / stride) * stride


def reschedule(noise: torch.Tensor, window: int, stride: int, seed: int) -> torch.Tensor:
    """`noise` `[b, c, T, h, w]` with frames `window`.. replaced block by block (in order, so a block may copy an
    already copied one) by a shuffle of the block `window` frames earlier; the shuffles come from Python's
    `random.Random(seed)`, as FreeNoise draws them (its seeded `random` module)."""
    out = noise.clone()
    shuffler = random.Random(seed)
    for start in range(window, noise.shape[2], stride):
        source = list(range(start - window, start - window + stride))
        shuffler.shuffle(source)
        out[:, :, start:start + stride] = out[:, :, source]
    return out


@contextmanager
def fused_windows(unet: torch.nn.Module, spans: Sequence[Window]) -> Iterator[None]:
    """Within the block, every temporal self-attention of `unet` attends within `spans` and blends them."""
    attentions = [attention for t in unet.modules() if isinstance(t, TemporalTransformer)
                  for block in t.transformer_blocks for attention in (block.attn1, block.attn2)]
    for attention in attentions:
        attention.windows = list(spans)
    try:
        yield
    finally:
        for attention in attentions:
            attention.windows = None


def even_starts(prompts: int, frames: int) -> list[int]:
    """The first frame of each of `prompts` prompts splitting `frames` evenly."""
    return [k * frames // prompts for k in range(prompts)]


def frame_contexts(embeddings: torch.Tensor, starts: Sequence[int], frames: int) -> torch.Tensor:
    """Per-frame text embeddings `[1, frames, n, d]` of prompts `embeddings` `[p, n, d]` starting at `starts`:
    each prompt's own embedding, and across each change a linear ramp from one to the next, centred on it, over a
    quarter of twice the shorter of the two prompts' spans. For two prompts splitting a video evenly this is
    FreeNoise's schedule: the first for 3/8 of the video, a ramp over the middle quarter, the second for the rest."""
    ends = list(starts[1:]) + [frames]
    rows = [embeddings[k] for k in range(len(starts)) for _ in range(starts[k], ends[k])]
    for k in range(1, len(starts)):
        span = 2 * min(starts[k] - starts[k - 1], ends[k] - starts[k])
        ramp = span - 2 * (span * 3 // 8)
        if ramp < 2:
            continue
        step = (embeddings[k] - embeddings[k - 1]) / (ramp - 1)
        for i in range(ramp):
            rows[starts[k] - ramp // 2 + i] = embeddings[k - 1] + step * i
    return torch.stack(rows)[None]


def injection_steps(timesteps: Sequence[int]) -> frozenset[int]:
    """The timesteps (of a run that visits `timesteps` in this order) where motion injection applies: the first
    five steps and those after the sixteenth, as FreeNoise fixes them."""
    return frozenset(t for i, t in enumerate(timesteps) if i < 5 or i > 15)
