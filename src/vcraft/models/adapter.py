"""The control adapter of VideoCrafter's VideoControl (T2I-Adapter's design): each frame's one-channel control map
(depth, or brightness for the embedded model) becomes one feature per UNet level, which the UNet adds after that
level's last input block. Frames are independent: the adapter is 2D and sees `[(b t), 1, H, W]`. The maps are
normalised per frame to [-1, 1] (`normalise_frames`), as the original normalises depth.

Module and parameter names follow the release's `adapter.pth` (`conv_in`, `body.N.block1/block2/in_conv`). Only
the release's variant is built: skip connections are the identity (`sk`), downsampling is 2x2 average pooling
(no convolution), and a block whose width changes opens with a convolution (`in_conv`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vcraft.config import AdapterConfig


class AdapterBlock(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, down: bool):
        super().__init__()
        self.down = down
        self.in_conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2) if cin != cout else None
        self.block1 = nn.Conv2d(cout, cout, 3, padding=1)
        self.block2 = nn.Conv2d(cout, cout, kernel, padding=kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down:
            x = F.avg_pool2d(x, 2)
        if self.in_conv is not None:
            x = self.in_conv(x)
        return x + self.block2(F.relu(self.block1(x)))


class ControlAdapter(nn.Module):
    """Control maps `[b, 1, t, H, W]` in [-1, 1] -> one feature `[b, c_k, t, h_k, w_k]` per UNet level, the first at
    the latent size (the maps are pixel-unshuffled by the autoencoder's factor)."""

    def __init__(self, cfg: AdapterConfig, widths: list[int], downscale: int):
        """`widths`: the UNet's, level by level; `downscale`: the autoencoder's."""
        super().__init__()
        self.cfg = cfg
        self.downscale = downscale
        self.conv_in = nn.Conv2d(downscale * downscale, widths[0], 3, padding=1)
        self.body = nn.ModuleList(
            AdapterBlock(widths[level - 1] if level and i == 0 else width, width, cfg.kernel, down=level > 0 and i == 0)
            for level, width in enumerate(widths) for i in range(cfg.blocks))

    def forward(self, maps: torch.Tensor) -> list[torch.Tensor]:
        b, _, t = maps.shape[:3]
        x = self.conv_in(F.pixel_unshuffle(maps.transpose(1, 2).flatten(0, 1), self.downscale))
        features = []
        for level, start in enumerate(range(0, len(self.body), self.cfg.blocks)):
            for block in self.body[start:start + self.cfg.blocks]:
                x = block(x)
            features.append(x.unflatten(0, (b, t)).transpose(1, 2))
        return features


def normalise_frames(maps: torch.Tensor) -> torch.Tensor:
    """Each frame of `[b, 1, t, h, w]` maps stretched to [-1, 1] on its own, as the original normalises depth."""
    low = maps.amin(dim=(1, 3, 4), keepdim=True)
    high = maps.amax(dim=(1, 3, 4), keepdim=True)
    return 2 * (maps - low) / (high - low + 1e-7) - 1


def brightness(video: torch.Tensor) -> torch.Tensor:
    """Each frame's brightness (Rec. 601 luma) `[b, 1, t, h, w]`, normalised per frame: the embedded model's control
    signal, which any video has without an estimator."""
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=video.dtype, device=video.device)
    return normalise_frames(torch.einsum("bcthw,c->bthw", video, weights)[:, None])


def grey(video: torch.Tensor) -> torch.Tensor:
    """Depth maps given as grey frames `[b, 3, t, h, w]` -> `[b, 1, t, h, w]`, normalised per frame."""
    return normalise_frames(video.mean(dim=1, keepdim=True))
