"""Multistep solvers in log-SNR time: DPM-Solver++(2M) and its SDE form (Lu et al. 2022) and UniPC (Zhao et al.
2023), behind the sampler interface of sampling/__init__.py, written over the data prediction x0 = (x - sigma eps)
/ alpha.

Why they are exact for VideoCrafter's schedule: its noising, x_t = sqrt(a_t) s_t x_0 + sqrt(1 - a_t) eps, is a
Gaussian diffusion with signal coefficient alpha_t = sqrt(a_t) s_t and noise coefficient sigma_t = sqrt(1 - a_t).
The solvers' updates are derived for any such alpha_t and sigma_t and use nothing else (lambda_t = log(alpha_t /
sigma_t) is their time), so they integrate this process itself, signal scale included. diffusers' schedulers
assume alpha_t^2 + sigma_t^2 = 1 and draw i.i.d. noise, so they would need a rescaled view and could not use the
frame-correlated noise of `noise()` (frame_noise_share); these short functions need neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from vcraft.sampling import Callback, Noise, Replace, Step, coefficient
from vcraft.sampling.denoisers import DenoiserFn
from vcraft.sampling.schedule import Schedule


def _alpha_sigma(schedule: Schedule) -> tuple[np.ndarray, np.ndarray]:
    a = schedule.alphas_cumprod.double().numpy()
    return np.sqrt(a) * schedule.scale_arr.double().numpy(), np.sqrt(1 - a)


def solver_timesteps(schedule: Schedule, steps: int) -> list[int]:
    """The timesteps of `steps` steps from the last one down to 0, evenly spaced in lambda (each the nearest
    whole timestep; where several fall on one, near t = 0 at large counts, it is used once). The last is where
    the video ends, timestep 0's level, as with DDIM. Evenly in lambda, not in t: the step size of these solvers
    is the change of lambda, which near t = 0 grows like log(t), so an even split of t leaves a last step that
    hardly shrinks with more steps."""
    if not 1 <= steps <= schedule.timesteps:
        raise ValueError(f"steps must be between 1 and {schedule.timesteps}, got {steps}")
    alpha, sigma = _alpha_sigma(schedule)
    lam = np.log(alpha / sigma)  # falls as t grows
    wanted = np.linspace(lam[-1], lam[0], steps + 1)
    return sorted(set(np.abs(lam[None, :] - wanted[:, None]).argmin(axis=1).tolist()), reverse=True)


@dataclass
class Levels:
    """The noise levels a solver steps through: timestep, alpha, sigma and lambda of each, the last one the end."""

    t: list[int]
    alpha: np.ndarray
    sigma: np.ndarray
    lam: np.ndarray

    @classmethod
    def of(cls, schedule: Schedule, timesteps: list[int]) -> "Levels":
        alpha, sigma = (v[timesteps] for v in _alpha_sigma(schedule))
        return cls(list(timesteps), alpha, sigma, np.log(alpha / sigma))

    @property
    def steps(self) -> int:
        return len(self.t) - 1


def _denoised(denoiser: DenoiserFn, x: torch.Tensor, lv: Levels, i: int, replace: Optional[Replace]) -> tuple:
    """The latents (after `replace`) and the clean latents the model predicts from them at level i."""
    if replace is not None:
        x = replace(x, lv.t[i])
    eps = denoiser(x, lv.t[i])
    return x, (x - coefficient(lv.sigma[i], x) * eps) / coefficient(lv.alpha[i], x)


def dpmpp_2m(denoiser: DenoiserFn, x: torch.Tensor, schedule: Schedule, steps: int, eta: float = 0.0,
             noise: Optional[Noise] = None, callback: Optional[Callback] = None, replace: Optional[Replace] = None
             ) -> torch.Tensor:
    """DPM-Solver++(2M): second order from the second step on, one model call a step; deterministic (`eta` is
    not used). Its first step is DDIM's with eta 0."""
    return _dpmpp(denoiser, x, Levels.of(schedule, solver_timesteps(schedule, steps)), 0.0, noise,
                  callback, replace)


def dpmpp_2m_sde(denoiser: DenoiserFn, x: torch.Tensor, schedule: Schedule, steps: int, eta: float = 1.0,
                 noise: Optional[Noise] = None, callback: Optional[Callback] = None, replace: Optional[Replace] = None
                 ) -> torch.Tensor:
    """SDE-DPM-Solver++(2M): fresh `noise()` each step, `eta` its share (1: the SDE, 0: dpmpp_2m)."""
    if eta > 0 and noise is None:
        raise ValueError("a stochastic sampler needs a noise source")
    return _dpmpp(denoiser, x, Levels.of(schedule, solver_timesteps(schedule, steps)), eta, noise,
                  callback, replace)


def _dpmpp(denoiser: DenoiserFn, x: torch.Tensor, lv: Levels, eta: float, noise: Optional[Noise],
           callback: Optional[Callback], replace: Optional[Replace]) -> torch.Tensor:
    previous = None  # the clean latents predicted one step before, for the second-order term
    for i in range(lv.steps):
        x, x0 = _denoised(denoiser, x, lv, i, replace)
        h = lv.lam[i + 1] - lv.lam[i]
        d = x0
        if previous is not None:
            r = (lv.lam[i] - lv.lam[i - 1]) / h
            d = x0 + coefficient(1 / (2 * r), x0) * (x0 - previous)
        # x' = s'/s e^(-eta h) x + a' (1 - e^(-(1+eta) h)) d [+ s' sqrt(1 - e^(-2 eta h)) z], a = alpha, s = sigma
        x = coefficient(lv.sigma[i + 1] / lv.sigma[i] * np.exp(-eta * h), x) * x \
            + coefficient(-lv.alpha[i + 1] * np.expm1(-(1 + eta) * h), x) * d
        if eta > 0:
            x = x + coefficient(lv.sigma[i + 1] * np.sqrt(-np.expm1(-2 * eta * h)), x) * noise().to(x.device, x.dtype)
        previous = x0
        if callback is not None:
            callback(Step(i + 1, lv.steps, x, x0))
    return x


def unipc(denoiser: DenoiserFn, x: torch.Tensor, schedule: Schedule, steps: int, eta: float = 0.0,
          noise: Optional[Noise] = None, callback: Optional[Callback] = None, replace: Optional[Replace] = None
          ) -> torch.Tensor:
    """UniPC with B(h) = e^h - 1 (bh2): a second-order predictor (UniP) and, with the model call the next step
    makes anyway, a corrector (UniC) of the point just reached; one model call a step, deterministic."""
    lv = Levels.of(schedule, solver_timesteps(schedule, steps))
    x, x0 = _denoised(denoiser, x, lv, 0, replace)
    start, previous = x, None  # the step's starting point (for the corrector) and the prediction before x0's
    for i in range(lv.steps):
        h = lv.lam[i + 1] - lv.lam[i]
        b = np.expm1(-h)  # B(h) of the data-prediction form; also e^(-h) - 1 of the first-order term
        rk = (lv.lam[i - 1] - lv.lam[i]) / h if previous is not None else None
        linear = coefficient(lv.sigma[i + 1] / lv.sigma[i], x) * start - coefficient(lv.alpha[i + 1] * b, x) * x0
        x = linear if rk is None else linear - coefficient(lv.alpha[i + 1] * b * 0.5 / rk, x) * (previous - x0)
        if i + 1 < lv.steps:  # the corrector, with the prediction at the new point
            x, x0_new = _denoised(denoiser, x, lv, i + 1, replace)
            x = _corrected(linear, x0, x0_new, previous, rk, h, lv.alpha[i + 1])
            start, previous, x0 = x, x0, x0_new
        if callback is not None:
            callback(Step(i + 1, lv.steps, x, x0))
    return x


def _corrected(linear: torch.Tensor, x0: torch.Tensor, x0_new: torch.Tensor, previous: Optional[torch.Tensor],
               rk: Optional[float], h: float, alpha_next: float) -> torch.Tensor:
    """UniC: the step from `x0` redone with the model's prediction `x0_new` at its end (order 1 after the first
    step, else 2), coefficients from the paper's linear system for B(h) = e^h - 1."""
    hh = -h
    b = np.expm1(hh)
    if rk is None:
        rhos = np.array([0.5])
    else:
        phi1 = np.expm1(hh) / hh - 1  # h_phi_k for k = 1, then 2
        phi2 = phi1 / hh - 0.5
        rhos = np.linalg.solve(np.array([[1.0, 1.0], [rk, 1.0]]), np.array([phi1, phi2 * 2]) / b)
    correction = coefficient(rhos[-1], x0) * (x0_new - x0)
    if rk is not None:
        correction = correction + coefficient(rhos[0] / rk, x0) * (previous - x0)
    return linear - coefficient(alpha_next * b, x0) * correction
