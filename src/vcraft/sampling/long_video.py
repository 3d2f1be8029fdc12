"""Videos longer than the model's clip, made autoregressively as in LVDM: sample a clip, then again and
again a next clip whose first `overlap` latent frames are the last ones of the clip before.

Only the current window's latents exist at any time: `extend` yields each window's new latent frames so
the caller can decode and write them before the next window is sampled.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator, Optional

import torch

from vcraft.sampling.schedule import Schedule


def window_count(frames: int, clip: int, overlap: int) -> int:
    """Windows needed for `frames` frames: the first makes `clip`, each next `clip - overlap` more."""
    return 1 + math.ceil(max(0, frames - clip) / (clip - overlap))


def extend_video(sample_window: Callable[[Optional[torch.Tensor]], torch.Tensor], frames: int, clip: int,
           overlap: int) -> Iterator[torch.Tensor]:
    """Yield new latent frames `[b, c, n, h, w]` window by window until `frames` exist.
    `sample_window(kept)` returns a whole window `[b, c, clip, h, w]` that starts with `kept` (None for
    the first window). Every window is a full clip, as the model was trained; the last one's surplus
    frames are dropped."""
    made, kept = 0, None
    while made < frames:
        window = sample_window(kept)
        new = window if kept is None else window[:, :, overlap:]
        new = new[:, :, :frames - made]
        made += new.shape[2]
        kept = window[:, :, clip - overlap:]
        yield new


def replace_known(known: torch.Tensor, noise: torch.Tensor, schedule: Schedule
                  ) -> Callable[[torch.Tensor, int], torch.Tensor]:
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
