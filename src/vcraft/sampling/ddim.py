"""DDIM, as VideoCrafter samples (signal scale included): the first sampler behind the interface of
sampling/__init__.py."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from vcraft.sampling import Callback, Noise, Replace, Step, coefficient
from vcraft.sampling.denoisers import DenoiserFn
from vcraft.sampling.schedule import Schedule


def ddim_timesteps(steps: int, total: int = 1000) -> list[int]:
    """Ascending timesteps `0, c, 2c, ... (+1)` with `c = total // steps`, as the reference spaces them.
    When `total` is not a multiple of `steps` this gives more than `steps` timesteps (7 -> 8).
    Where c divides total - 1 (3, 9, 27, 37, 111, 333 or 1000 steps) the last one would be `total`, past
    the schedule, and the reference crashes; vcraft uses `total - 1` there instead (once)."""
    if not 1 <= steps <= total:
        raise ValueError(f"steps must be between 1 and {total}, got {steps}")
    return sorted({min(t + 1, total - 1) for t in range(0, total, total // steps)})


def sample(denoiser: DenoiserFn, x: torch.Tensor, schedule: Schedule, steps: int, eta: float = 0.0,
           noise: Optional[Noise] = None, callback: Optional[Callback] = None, replace: Optional[Replace] = None
           ) -> torch.Tensor:
    """Run DDIM from x_T to the final latents; `eta` > 0 adds `noise()` at every step."""
    ts = ddim_timesteps(steps, schedule.timesteps)
    ac = schedule.alphas_cumprod.double().numpy()
    sc = schedule.scale_arr.double().numpy()
    # The step before the first one is timestep 0 (alphas_cumprod[0] = 0.99915, not 1), as in the reference.
    a = ac[ts]
    a_prev = np.concatenate([ac[:1], ac[ts[:-1]]])
    s = sc[ts]
    s_prev = np.concatenate([sc[:1], sc[ts[:-1]]])
    sigma = eta * np.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
    if eta > 0 and noise is None:
        raise ValueError("eta > 0 needs a noise source")

    for i, idx in enumerate(reversed(range(len(ts)))):
        if replace is not None:
            x = replace(x, ts[idx])
        e = denoiser(x, ts[idx])
        pred_x0 = (x - coefficient(np.sqrt(1 - a[idx]), x) * e) / coefficient(np.sqrt(a[idx]), x)
        pred_x0 = pred_x0 / coefficient(s[idx], x)
        direction = coefficient(np.sqrt(1 - a_prev[idx] - sigma[idx] ** 2), x) * e
        x = coefficient(np.sqrt(a_prev[idx]) * s_prev[idx], x) * pred_x0 + direction
        if sigma[idx] > 0:
            x = x + coefficient(sigma[idx], x) * noise().to(x.device, x.dtype)
        elif schedule.noise_every_step and noise is not None:
            noise()  # drawn and unused, as the first release's sampler does
        if callback is not None:
            callback(Step(i + 1, len(ts), x, pred_x0))
    return x
