"""Videos longer than the model's clip, made autoregressively as in LVDM: sample a clip, then again and
again a next clip whose first `overlap` latent frames are the last ones of the clip before
(TextToVideo.latents runs the windows; this module has the arithmetic and the replace hook). The latent frames a
window continues are its given frames."""

from __future__ import annotations

import bisect
import math
from typing import Sequence

import torch

from vcraft.sampling import Replace
from vcraft.sampling.schedule import Schedule


def window_count(frames: int, clip: int, overlap: int, continued: bool = False) -> int:
    """Windows needed for `frames` new frames: the first makes `clip` (`clip - overlap` when it continues a given
    video), each next `clip - overlap` more."""
    if continued:
        return math.ceil(frames / (clip - overlap))
    return 1 + math.ceil(max(0, frames - clip) / (clip - overlap))


def new_frames(frames: int, clip: int, overlap: int, continued: bool = False) -> list[range]:
    """The frames of the video (counted from its first new one) that each window makes."""
    starts = [0] if not continued else []
    first = clip if not continued else 0
    while first < frames or not starts:
        starts.append(first)
        first += clip - overlap
    ends = starts[1:] + [frames]
    return [range(a, min(b, frames)) for a, b in zip(starts, ends)]


def window_prompts(at: Sequence[int], frames: int, clip: int, overlap: int, continued: bool = False) -> list[int]:
    """Which of the prompts starting at frames `at` each window takes: the one of the middle of its new frames."""
    return [bisect.bisect_right(at, made[len(made) // 2]) - 1 for made in new_frames(frames, clip, overlap,
                                                                                       continued)]


def replace_given(given: torch.Tensor, noise: torch.Tensor, schedule: Schedule) -> Replace:
    """The sampler's `replace` hook for training-free continuation: before each step, the first frames of
    the latents become the given clean latents noised to that step's level (signal scale included), with
    one fixed draw of noise, so that they follow the path DDIM itself would take towards them."""
    k = given.shape[2]

    def replace(x: torch.Tensor, t: int) -> torch.Tensor:
        a = schedule.alphas_cumprod[t].item()
        s = schedule.scale_arr[t].item()
        noised = (a ** 0.5 * s) * given + (1 - a) ** 0.5 * noise
        return torch.cat([noised.to(x.dtype), x[:, :, k:]], dim=2)

    return replace
