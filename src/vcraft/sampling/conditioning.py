"""What one window of a video is conditioned on, as plain data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class Conditioning:
    """The inputs a denoiser combines with the noisy latents. A new kind of input is a new field here and a few
    lines in `denoisers.unet_inputs`, which turns it into the UNet's arguments for sampling and training alike."""

    context: torch.Tensor  # [b, tokens, dim]: the prompt's text embedding; [b, t, tokens, dim]: one a frame
    uncond: Optional[torch.Tensor]  # the same for the negative (or empty) prompt; None: no guidance
    fps: torch.Tensor  # [b] integer: the motion rate the model sees
    # Clean latents [b, c, k, h, w] of the window's first k frames, which it continues, and how they are tied
    # to it: "mask" (the UNet sees them and a mask: models trained to continue) or "replace" (the sampler puts
    # them back at each step's noise level: any model).
    given: Optional[torch.Tensor] = None
    extend: str = "mask"
    # [b] integers: how many of the given frames each clip has (training, where they vary); None: all of them.
    given_count: Optional[torch.Tensor] = None
    # Whether guidance's unconditional pass also sees the given frames ("mask" only). LVDM hides them from it;
    # vcraft shows them, which kept colour and motion across windows (docs/embedded-model.md).
    uncond_sees_given: bool = True
    # Image-to-video: the picture's tokens [b, n, dim], and those of guidance's unconditional pass (an all-zero
    # image's), which follow the text tokens in the UNet's context.
    image: Optional[torch.Tensor] = None
    uncond_image: Optional[torch.Tensor] = None
    # A control adapter's features of the window, one [b, c, t, h, w] per UNet level; both guidance passes see them.
    control: Optional[list[torch.Tensor]] = None
    # FreeNoise's motion injection: at the timesteps `early_at`, the conditional pass's input and middle blocks see
    # this context `[b, t, n, dim]` instead (the last prompt in every frame).
    early: Optional[torch.Tensor] = None
    early_at: frozenset[int] = frozenset()
    # A UNet with a guidance embedding (T2V-Turbo) takes the guidance scale as an input, with no unconditional pass;
    # T2V-Turbo-v2's motion guidance scale too, at timesteps >= motion_min_t (below, a scale of 0: not none).
    guidance_scale: Optional[float] = None
    motion_scale: Optional[float] = None
    motion_min_t: int = 0

    @property
    def tokens(self) -> torch.Tensor:
        """The conditional pass's context: the text tokens, then the image tokens if any."""
        if self.image is None:
            return self.context
        image = self.image if self.context.ndim == 3 else \
            self.image[:, None].expand(-1, self.context.shape[1], -1, -1)
        return torch.cat([self.context, image], dim=-2)

    @property
    def uncond_tokens(self) -> Optional[torch.Tensor]:
        if self.uncond is None or self.uncond_image is None:
            return self.uncond
        return torch.cat([self.uncond, self.uncond_image], dim=1)

    @property
    def given_to_unet(self) -> Optional[torch.Tensor]:
        """The given frames the UNet itself sees."""
        return self.given if self.extend == "mask" else None
