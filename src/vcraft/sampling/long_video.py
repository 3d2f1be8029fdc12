"""Videos longer than the model's clip, made autoregressively as in LVDM: sample a clip, then again and
again a next clip whose first `overlap` latent frames are the last ones of the clip before
(TextToVideo.latents runs the windows; this module has the arithmetic and the replace hook)."""

from __future__ import annotations

import math

import torch

from vcraft.sampling import Keep
from vcraft.sampling.schedule import Schedule


def window_count(frames: int, clip: int, overlap: int, continued: bool = False) -> int:
    """Windows needed for `frames` new frames: the first makes `clip` (`clip - overlap` when it continues a given
    video), each next `clip - overlap` more."""
    if continued:
        return math.ceil(frames / (clip - overlap))
    return 1 + math.ceil(max(0, frames - clip) / (clip - overlap))


def replace_known(known: torch.Tensor, noise: torch.Tensor, schedule: Schedule) -> Keep:
    """The sampler's `keep` hook for training-free continuation: before each step, the first frames of
    the latents become the known clean latents noised to that step's level (signal scale included), with
    one fixed draw of noise, so that they follow the path DDIM itself would take towards them."""
    k = known.shape[2]

    def keep(x: torch.Tensor, t: int) -> torch.Tensor:
        a = schedule.alphas_cumprod[t].item()
        s = schedule.scale_arr[t].item()
        noised = (a ** 0.5 * s) * known + (1 - a) ** 0.5 * noise
        return torch.cat([noised.to(x.dtype), x[:, :, k:]], dim=2)

    return keep
