"""Whether a FreeNoise video fits: it denoises all its frames at once, so its memory grows with its length (window
by window extension keeps one window's). Checked before loading on the command line, and before sampling in the
API (the web app and Ray workers included)."""

from __future__ import annotations

from pathlib import Path

import torch

from vcraft.config import ModelConfig, UNetConfig
from vcraft.errors import VcraftError
from vcraft.models.unet3d import BlockPlan
from vcraft.pipeline.settings import Settings, made_at_once
from vcraft.sampling.freenoise import tiled_frames

# Working memory of a frame: this many times the UNet's skip connections (held from the input blocks to the output
# blocks) a guidance pass, in the dtype, and a fixed part; fitted with a margin to scripts/bench_freenoise.py's
# measurements (docs/benchmarks.md, "FreeNoise").
SKIP_COPIES = 8
PER_FRAME = 6 * 2**20


def skip_elements(unet: UNetConfig) -> float:
    """Elements of the UNet's skip connections a frame, per latent pixel of its input."""
    total, scale = float(unet.model_channels), 1.0
    for step in BlockPlan.of(unet).inputs:
        scale /= 4 if step.down else 1
        total += step.cout * scale
    return total


def freenoise_bytes(model: ModelConfig, s: Settings, dtype: torch.dtype) -> int:
    """The working memory (beyond the model's weights) that FreeNoise needs for the video of `s`."""
    f = 2 ** (len(model.autoencoder.ch_mult) - 1)
    frames = tiled_frames(s.frames, s.window, s.window_stride)
    passes = 1 if s.guidance == 1.0 else 2
    pixels = (s.height // f) * (s.width // f)
    return round(frames * (passes * SKIP_COPIES * skip_elements(model.unet) * pixels * dtype.itemsize + PER_FRAME))


def free_bytes(device: torch.device) -> int | None:
    """Memory free on `device` now (None where it cannot be told)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu":
        meminfo = Path("/proc/meminfo")
        if meminfo.is_file():
            for line in meminfo.read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    return None


def check_fits(model: ModelConfig, s: Settings, device: torch.device, dtype: torch.dtype) -> None:
    """VcraftError when `s` asks FreeNoise for a video whose working memory exceeds what `device` has free."""
    if not made_at_once(s, model):
        return
    needed, free = freenoise_bytes(model, s, dtype), free_bytes(device)
    if free is not None and needed > free:
        raise VcraftError(f"--extend freenoise: {s.frames} frames at {s.height}x{s.width} need about "
                          f"{needed / 2**30:.1f} GiB of working memory and {device} has {free / 2**30:.1f} GiB free; "
                          "make fewer frames, or use --extend replace (its memory does not grow with length)")
