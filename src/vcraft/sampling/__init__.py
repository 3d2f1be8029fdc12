"""Samplers turn noise into latents with a denoiser (sampling/denoisers.py). Every sampler is one function

    sample(denoiser, x, schedule, steps, eta=0.0, noise=None, callback=None, keep=None) -> latents

over `eps = denoiser(x, t)`, starting from the noise `x`: `noise()` draws a standard-normal tensor like `x`
(from the video's own generator) wherever the sampler needs fresh noise; `callback(Step(...))` follows
every step; `keep(x, t)`, before each step, may overwrite parts of the latents with what is known at
timestep t (long_video.replace_known). DDIM (ddim.py) is the first one.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch


class Step(NamedTuple):
    """What a sampler reports after each step."""

    index: int  # 1 for the first step
    total: int
    x: torch.Tensor  # the latents after the step
    denoised: torch.Tensor  # the clean latents the step predicted


Noise = Callable[[], torch.Tensor]
Callback = Callable[[Step], None]
Keep = Callable[[torch.Tensor, int], torch.Tensor]
Progress = Callable[[int, int], None]  # progress(step, total) of a whole video, for users
