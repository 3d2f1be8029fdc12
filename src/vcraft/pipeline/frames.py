"""Pixels to tensors and back: input pictures and videos for the models, decoded frames as uint8 (the reference's
quantisation)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from vcraft.pipeline.inputs import Picture


def frames_to_uint8(video: torch.Tensor) -> torch.Tensor:
    """`[b, 3, t, H, W]` in [-1, 1] -> `[b, t, H, W, 3]` uint8, truncating as the reference does."""
    return ((video.float().clamp(-1, 1) + 1) / 2 * 255).to(torch.uint8).permute(0, 2, 3, 4, 1)


def picture_tensor(picture: Picture, height: int, width: int) -> torch.Tensor:
    """The picture at the video's size as `[1, 3, height, width]` in [-1, 1], as the reference loads it: bilinear
    through pixel centres on the 0-255 values, no antialiasing (OpenCV's INTER_LINEAR), then scaled."""
    x = torch.tensor(picture.pixels, dtype=torch.float32).permute(2, 0, 1)[None]
    if tuple(x.shape[-2:]) != (height, width):
        x = F.interpolate(x, (height, width), mode="bilinear", align_corners=False)
    return (x / 255 - 0.5) * 2


def frames_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 frames `[T, H, W, 3]` as a video `[1, 3, T, H, W]` in [-1, 1], for the autoencoder's encoder."""
    return torch.tensor(frames, dtype=torch.float32).permute(3, 0, 1, 2)[None] / 127.5 - 1
