"""The few-step sampler of consistency-distilled models (T2V-Turbo's LCM scheduler), behind the interface of
sampling/__init__.py.

Its timesteps are `steps` of 200 "origin" timesteps `5k - 1`, evenly from 999. Each step predicts the clean latents
(`pred_x0` from the noise estimate), applies the consistency boundary condition (`c_skip x + c_out pred_x0`, which is
`pred_x0` to within 2e-7 from t = 124 up), and noises that to the next timestep with a fresh draw. The video is the
last step's clean estimate; its noised copy is drawn but unused, as the original does.
"""

from __future__ import annotations

from typing import Optional

import torch

from vcraft.sampling import Callback, Noise, Replace, Step, coefficient
from vcraft.sampling.denoisers import DenoiserFn
from vcraft.sampling.schedule import Schedule

ORIGIN_STEPS = 200  # the distillation's grid (T2V-Turbo's lcm_origin_steps)
SIGMA_DATA = 0.5
TIMESTEP_SCALING = 10.0


def consistency_timesteps(steps: int, total: int = 1000) -> list[int]:
    """The timesteps of `steps` steps, descending: 4 -> 999, 749, 499, 249."""
    if not 1 <= steps <= ORIGIN_STEPS:
        raise ValueError(f"steps must be between 1 and {ORIGIN_STEPS}, got {steps}")
    spacing = total // ORIGIN_STEPS
    origin = [spacing * k - 1 for k in range(1, ORIGIN_STEPS + 1)]
    return origin[::-(ORIGIN_STEPS // steps)][:steps]


def boundary(t: int) -> tuple[float, float]:
    """`c_skip` and `c_out` at timestep t."""
    s = t * TIMESTEP_SCALING
    return SIGMA_DATA ** 2 / (s ** 2 + SIGMA_DATA ** 2), s / (s ** 2 + SIGMA_DATA ** 2) ** 0.5


def sample(denoiser: DenoiserFn, x: torch.Tensor, schedule: Schedule, steps: int, eta: float = 0.0,
           noise: Optional[Noise] = None, callback: Optional[Callback] = None, replace: Optional[Replace] = None
           ) -> torch.Tensor:
    """Consistency sampling from x_T; `eta` is not used (the noise of every step is the method's own)."""
    ts = consistency_timesteps(steps, schedule.timesteps)
    if len(ts) > 1 and noise is None:
        raise ValueError("consistency sampling of more than one step needs a noise source")
    # The distillation's own float32 products (LatentDiffusion's buffers are float64's, rounded).
    a = torch.cumprod(1 - schedule.betas, dim=0).tolist()
    for i, t in enumerate(ts):
        prev = ts[i + 1] if i + 1 < len(ts) else t  # the last step noises back to its own level
        if replace is not None:
            x = replace(x, t)
        eps = denoiser(x, t)
        pred_x0 = (x - coefficient((1 - a[t]) ** 0.5, x) * eps) / coefficient(a[t] ** 0.5, x)
        c_skip, c_out = boundary(t)
        denoised = coefficient(c_out, x) * pred_x0 + coefficient(c_skip, x) * x
        if len(ts) > 1:
            x = coefficient(a[prev] ** 0.5, x) * denoised + coefficient((1 - a[prev]) ** 0.5, x) * \
                noise().to(x.device, x.dtype)
        if callback is not None:
            callback(Step(i + 1, len(ts), x, denoised))
    return denoised
