"""Noise schedule: LDM "linear" betas and VideoCrafter's signal scale.

With `use_scale`, the clean signal is multiplied by `scale_arr[t]` when noised: the scale falls linearly
from `scale_a` to `scale_b` over the first `mid_step` steps, then stays at `scale_b`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from vcraft.config import ScheduleConfig


@dataclass
class Schedule:
    alphas_cumprod: torch.Tensor  # [timesteps], float32
    scale_arr: torch.Tensor  # [timesteps] (ones without use_scale), float32
    betas: torch.Tensor
    frame_noise_share: float = 0.0  # see ScheduleConfig
    noise_every_step: bool = False  # see ScheduleConfig

    @property
    def timesteps(self) -> int:
        return len(self.alphas_cumprod)


def make_schedule(cfg: ScheduleConfig) -> Schedule:
    # float64 throughout, stored as float32, exactly as the reference computes its buffers.
    betas = np.linspace(cfg.linear_start ** 0.5, cfg.linear_end ** 0.5, cfg.timesteps, dtype=np.float64) ** 2
    alphas_cumprod = np.cumprod(1.0 - betas)
    return Schedule(
        alphas_cumprod=torch.tensor(alphas_cumprod, dtype=torch.float32),
        scale_arr=torch.tensor(scale_array(cfg)[: cfg.timesteps], dtype=torch.float32),
        betas=torch.tensor(betas, dtype=torch.float32),
        frame_noise_share=cfg.frame_noise_share,
        noise_every_step=cfg.noise_every_step,
    )


def scale_array(cfg: ScheduleConfig) -> np.ndarray:
    """The reference's `scale_arr` buffer. Without `fix_scale_bug` its tail is `timesteps` long, so the
    array has `mid_step + timesteps` entries (only the first `timesteps` are ever used)."""
    if not cfg.use_scale:
        return np.ones(cfg.timesteps)
    ramp = np.linspace(cfg.scale_a, cfg.scale_b, cfg.mid_step)
    tail = cfg.timesteps - cfg.mid_step if cfg.fix_scale_bug else cfg.timesteps
    return np.concatenate([ramp, np.full(tail, cfg.scale_b)])


def frame_noise(schedule: Schedule, randn: Callable[[int], torch.Tensor], frames: int) -> torch.Tensor:
    """Standard-normal noise for `frames` frames, from `randn(n)` (n frames along dim 2), with the
    schedule's share of the variance common to all frames. Without a share, `randn(frames)` itself, so
    seeds give the same noise as a plain draw."""
    share = schedule.frame_noise_share
    if share == 0:
        return randn(frames)
    z = randn(frames + 1)
    return share ** 0.5 * z[:, :, :1] + (1 - share) ** 0.5 * z[:, :, 1:]


def draw_noise(schedule: Schedule, generator: torch.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    """Noise of `shape` `[b, c, t, h, w]` drawn on the CPU in float32 from `generator` (so a video depends
    on its seed, not on the device), with the schedule's share common to all frames."""
    b, c, t, h, w = shape
    return frame_noise(schedule, lambda n: torch.randn((b, c, n, h, w), generator=generator, dtype=torch.float32), t)


def at(schedule: Schedule, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """alphas_cumprod and scale_arr at timesteps `t` (one per batch item), shaped to broadcast over `like`."""
    shape = (-1,) + (1,) * (like.ndim - 1)
    return (schedule.alphas_cumprod.to(like.device)[t].view(shape),
            schedule.scale_arr.to(like.device)[t].view(shape))


def q_sample(schedule: Schedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Noise clean latents `x0` to timesteps `t` (one per batch item)."""
    a, s = at(schedule, t, x0)
    return a.sqrt() * x0 * s + (1 - a).sqrt() * noise


def v_target(schedule: Schedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """What a v-prediction model should output for `q_sample(schedule, x0, t, noise)`."""
    a, s = at(schedule, t, x0)
    return a.sqrt() * noise - (1 - a).sqrt() * s * x0
