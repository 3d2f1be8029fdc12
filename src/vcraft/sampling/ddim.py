"""DDIM sampling with classifier-free guidance, as VideoCrafter does it (signal scale included)."""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

from vcraft.sampling.schedule import Schedule

# eps = denoiser(x, t): the noise predicted for latents x at integer timestep t.
Denoiser = Callable[[torch.Tensor, int], torch.Tensor]


def ddim_timesteps(steps: int, total: int = 1000) -> list[int]:
    """Ascending timesteps `0, c, 2c, ... (+1)` with `c = total // steps`, as the reference spaces them.
    When `total` is not a multiple of `steps` this gives more than `steps` timesteps (7 -> 8).
    Where c divides total - 1 (3, 9, 27, 37, 111, 333 or 1000 steps) the last one would be `total`, past
    the schedule, and the reference crashes; vcraft uses `total - 1` there instead (once)."""
    if not 1 <= steps <= total:
        raise ValueError(f"steps must be between 1 and {total}, got {steps}")
    return sorted({min(t + 1, total - 1) for t in range(0, total, total // steps)})


def guided_denoiser(unet: torch.nn.Module, cond: torch.Tensor, uncond: Optional[torch.Tensor],
                    fps: torch.Tensor, guidance: float, min_t: int = 0) -> Denoiser:
    """Classifier-free guidance, `e_u + s (e_c - e_u)`, with both passes in one batched UNet call; at
    timesteps below `min_t`, the conditional pass alone."""

    def denoise(x: torch.Tensor, t: int) -> torch.Tensor:
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        if guidance == 1.0 or uncond is None or t < min_t:
            return unet(x, tt, cond, fps)
        e_cond, e_uncond = unet(torch.cat([x, x]), tt.repeat(2), torch.cat([cond, uncond]), fps.repeat(2)).chunk(2)
        return e_uncond + guidance * (e_cond - e_uncond)

    return denoise


def eps_from_v(predict_v: Denoiser, schedule: Schedule) -> Denoiser:
    """Turn a v-prediction model into a noise predictor, `eps = sqrt(a_t) v + sqrt(1 - a_t) x_t`
    (exact with the signal scale too, since v is defined on the scaled signal)."""
    ac = schedule.alphas_cumprod.double()

    def denoise(x: torch.Tensor, t: int) -> torch.Tensor:
        a = float(ac[t])
        return a ** 0.5 * predict_v(x, t) + (1 - a) ** 0.5 * x

    return denoise


def ddim_sample(
    denoiser: Denoiser,
    x: torch.Tensor,
    schedule: Schedule,
    steps: int,
    eta: float = 0.0,
    noise: Optional[Callable[[int], torch.Tensor]] = None,
    callback: Optional[Callable[[int, torch.Tensor, torch.Tensor], None]] = None,
    keep: Optional[Callable[[torch.Tensor, int], torch.Tensor]] = None,
) -> torch.Tensor:
    """Run DDIM from x_T to the final latent. `noise(i)` gives the standard-normal draw of step i (needed
    when eta > 0); `callback(i, x_prev, pred_x0)` sees every step; `keep(x, t)`, when given, may overwrite
    parts of the latents at timestep t before each step (known frames, see long_video.replace_known)."""
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

    def scalar(v: float) -> torch.Tensor:
        # Per-step scalars are float32 in the reference; keep them so for matching numbers.
        return torch.tensor(v, dtype=torch.float32, device=x.device).to(x.dtype)

    for i, idx in enumerate(reversed(range(len(ts)))):
        if keep is not None:
            x = keep(x, ts[idx])
        e = denoiser(x, ts[idx])
        pred_x0 = (x - scalar(np.sqrt(1 - a[idx])) * e) / scalar(np.sqrt(a[idx]))
        pred_x0 = pred_x0 / scalar(s[idx])
        direction = scalar(np.sqrt(1 - a_prev[idx] - sigma[idx] ** 2)) * e
        x = scalar(np.sqrt(a_prev[idx]) * s_prev[idx]) * pred_x0 + direction
        if sigma[idx] > 0:
            x = x + scalar(sigma[idx]) * noise(i).to(x.device, x.dtype)
        if callback is not None:
            callback(i, x, pred_x0)
    return x
