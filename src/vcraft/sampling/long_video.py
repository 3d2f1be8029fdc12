"""Videos longer than the model's clip, made autoregressively as in LVDM: sample a clip, then again and
again a next clip whose first `overlap` latent frames are the last ones of the clip before
(TextToVideo.latents runs the windows; this module has the arithmetic and the replace hook). The latent frames a
window continues are its given frames."""

from __future__ import annotations

import math

import torch

from vcraft.sampling import Replace
from vcraft.sampling.schedule import Schedule


def window_count(frames: int, clip: int, overlap: int, continued: bool = False) -> int:
    """Windows needed for `frames` new frames: the first makes `clip` (`clip - overlap` when it continues a given
    video), each next `clip - overlap` more."""
    if continued:
        return math.ceil(frames / (clip - overlap))
    return 1 + math.ceil(max(0, frames - clip) / (clip - overlap))


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
