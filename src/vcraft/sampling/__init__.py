"""Samplers turn noise into latents with a denoiser (sampling/denoisers.py). Every sampler is one function

    sample(denoiser, x, schedule, steps, eta=0.0, noise=None, callback=None, replace=None) -> latents

over `eps = denoiser(x, t)`, starting from the noise `x`: `noise()` draws a standard-normal tensor like `x`
(from the video's own generator) wherever the sampler needs fresh noise; `callback(Step(...))` follows
every step; `replace(x, t)`, before each step, may overwrite the given frames of the latents with what they
are at timestep t (long_video.replace_given). `SAMPLERS` names them: DDIM (ddim.py, the reference's), the
multistep solvers of solvers.py, and consistency.py's few steps for distilled models.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, NamedTuple

import torch

from vcraft.config import SAMPLERS  # noqa: F401  (the names; here with the functions they stand for)

if TYPE_CHECKING:
    from vcraft.sampling.schedule import Schedule


class Step(NamedTuple):
    """What a sampler reports after each step."""

    index: int  # 1 for the first step
    total: int
    x: torch.Tensor  # the latents after the step
    denoised: torch.Tensor  # the clean latents the step predicted


Noise = Callable[[], torch.Tensor]
Callback = Callable[[Step], None]
Replace = Callable[[torch.Tensor, int], torch.Tensor]


def coefficient(v: float, like: torch.Tensor) -> torch.Tensor:
    """A per-step coefficient, computed in float64, as the float32 scalar the reference applies (then `like`'s
    dtype), so that the numbers match."""
    return torch.tensor(v, dtype=torch.float32, device=like.device).to(like.dtype)


def sampler(name: str) -> Callable[..., torch.Tensor]:
    """The sample function of a name in SAMPLERS."""
    from vcraft.sampling import consistency, ddim, solvers

    return {"ddim": ddim.sample, "dpmpp-2m": solvers.dpmpp_2m, "dpmpp-2m-sde": solvers.dpmpp_2m_sde,
            "unipc": solvers.unipc, "consistency": consistency.sample}[name]


def model_timesteps(name: str, steps: int, schedule: "Schedule") -> list[int]:
    """The timesteps at which sampler `name` calls the model in `steps` steps, in order (the timestep spacings can
    give one more or fewer calls than steps)."""
    from vcraft.sampling import consistency, ddim, solvers

    if name == "ddim":
        return ddim.ddim_timesteps(steps, schedule.timesteps)[::-1]
    if name == "consistency":
        return consistency.consistency_timesteps(steps, schedule.timesteps)
    return solvers.solver_timesteps(schedule, steps)[:-1]


def step_count(name: str, steps: int, schedule: "Schedule") -> int:
    """How many model calls (and callback steps) `steps` means for a sampler."""
    return len(model_timesteps(name, steps, schedule))
