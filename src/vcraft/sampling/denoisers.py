"""The model as a denoiser for the samplers: `eps = denoiser(x, t)`, the noise predicted in latents `x` at
integer timestep `t`. Classifier-free guidance, v-to-eps and frame conditioning are small named functions
that `Denoiser` applies in this order: the UNet's inputs (`unet_inputs`: frame inputs, both guidance halves)
-> one UNet call -> guidance -> v-to-eps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from vcraft.models.unet3d import with_given_frames
from vcraft.sampling.conditioning import Conditioning

DenoiserFn = Callable[[torch.Tensor, int], torch.Tensor]


def guidance_batch(x: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents and contexts of both guidance passes stacked into one batch: the conditional half first.
    Every piece that splits the halves again follows this order. A per-frame context `[b, t, n, d]` gets the
    unconditional one in every frame."""
    if cond.ndim == 4 and uncond.ndim == 3:
        uncond = uncond[:, None].expand(-1, cond.shape[1], -1, -1)
    return torch.cat([x, x]), torch.cat([cond, uncond])


def classifier_free_guidance(both: torch.Tensor, scale: float) -> torch.Tensor:
    """`e_u + s (e_c - e_u)` from the output of a `guidance_batch`."""
    e_cond, e_uncond = both.chunk(2)
    return e_uncond + scale * (e_cond - e_uncond)


def eps_from_v(v: torch.Tensor, x: torch.Tensor, alpha_cumprod: float) -> torch.Tensor:
    """The noise a v-prediction means, `eps = sqrt(a_t) v + sqrt(1 - a_t) x_t` (exact with the signal scale
    too, since v is defined on the scaled signal)."""
    return alpha_cumprod ** 0.5 * v + (1 - alpha_cumprod) ** 0.5 * x


def frame_inputs(x: torch.Tensor, cond: Conditioning, guided: bool) -> torch.Tensor:
    """The input of a frame-conditioned UNet for latents `x` (a guidance batch when `guided`): the given
    frames, if any, and their mask appended; the unconditional half without them unless it sees them."""
    b, t = cond.context.shape[0], x.shape[2]
    given = torch.zeros((b, *x.shape[1:]), device=x.device, dtype=x.dtype)
    mask = torch.zeros((b, 1, t, 1, 1), device=x.device, dtype=x.dtype)
    if cond.given_to_unet is not None:
        k = cond.given_to_unet.shape[2]
        given[:, :, :k] = cond.given_to_unet
        count = torch.full((b,), k) if cond.given_count is None else cond.given_count
        mask[:, 0, :, 0, 0] = (torch.arange(t) < count[:, None].cpu()).to(mask)
    copies = x.shape[0] // b
    given, mask = given.repeat(copies, 1, 1, 1, 1), mask.repeat(copies, 1, 1, 1, 1)
    if guided and not cond.uncond_sees_given:
        given[b:], mask[b:] = 0, 0
    return with_given_frames(x, given, mask)


def unet_inputs(x: torch.Tensor, t: int | torch.Tensor, cond: Conditioning, frame_conditioning: bool,
                guided: bool) -> dict[str, Any]:
    """The UNet's keyword arguments (latents, timesteps, context, fps; control features, early context and the
    scales a UNet takes as inputs where there are any) for latents `x` at timestep `t` (one for all, or one per clip)
    under `cond`; with `guided`, both guidance passes in one batch. Sampling (`Denoiser`) and training both build them
    here."""
    xs, context = guidance_batch(x, cond.tokens, cond.uncond_tokens) if guided else (x, cond.tokens)
    copies = 2 if guided else 1
    inputs = frame_inputs(xs, cond, guided) if frame_conditioning else xs
    timesteps = t if isinstance(t, torch.Tensor) else torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
    args = {"x": inputs, "t": timesteps.repeat(copies), "context": context, "fps": cond.fps.repeat(copies)}
    if cond.control is not None:
        args["control"] = [f.repeat(copies, 1, 1, 1, 1) for f in cond.control]
    if cond.early is not None and not isinstance(t, torch.Tensor) and t in cond.early_at:
        # the unconditional pass keeps its context
        args["early_context"] = guidance_batch(x, cond.early, cond.uncond_tokens)[1] if guided else cond.early
    if cond.guidance_scale is not None:
        args["guidance_scale"] = torch.full_like(args["t"], cond.guidance_scale, dtype=torch.float32)
    if cond.motion_scale is not None:
        late = args["t"] < cond.motion_min_t
        args["motion_scale"] = torch.full_like(args["guidance_scale"], cond.motion_scale).masked_fill(late, 0.0)
    return args


@dataclass
class Denoiser:
    """A UNet with its conditioning, as `eps = denoiser(x, t)`: guided at timesteps >= `guidance_min_t`
    (both passes in one batched call), the conditional pass alone below; `alphas_cumprod` given for a
    v-prediction model (its output then turned into eps), None for an eps one."""

    unet: torch.nn.Module
    cond: Conditioning
    guidance: float
    guidance_min_t: int = 0
    frame_conditioning: bool = False
    alphas_cumprod: Optional[torch.Tensor] = None

    def __call__(self, x: torch.Tensor, t: int) -> torch.Tensor:
        guided = self.guidance != 1.0 and self.cond.uncond is not None and t >= self.guidance_min_t
        out = self.unet(**unet_inputs(x, t, self.cond, self.frame_conditioning, guided))
        if guided:
            out = classifier_free_guidance(out, self.guidance)
        if self.alphas_cumprod is not None:
            out = eps_from_v(out, x, float(self.alphas_cumprod[t]))  # a float32 value, exactly
        return out
