"""Control videos as VideoControl reads them: the frames its stride takes, scaled as it decodes them (the control maps
made from them: models/adapter.py and models/depth.py).

The original decodes with decord at the video's size, which scales the decoded YUV frames with FFmpeg's bilinear
filter before the RGB conversion; vcraft runs the same filter through imageio-ffmpeg's binary, so the bytes agree.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import torch

from vcraft.errors import VcraftError
from vcraft.pipeline.inputs import Footage


def control_indices(available: int, frames: int, stride: int) -> list[int]:
    """The control video's frames for a video of `frames` frames: every `stride`-th (-1: the length over `frames`);
    a stride that runs past the end becomes that too, as the original's `load_video` does."""
    step = available // frames if stride == -1 else stride
    if step * (frames - 1) >= available:
        step = available // frames
    return [step * i for i in range(frames)]


def _ffmpeg(args: list[str], stdin: bytes | None, height: int, width: int) -> np.ndarray:
    import imageio_ffmpeg

    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", *args,
               "-vf", f"scale={width}:{height}:flags=bilinear", "-fps_mode", "passthrough", "-pix_fmt", "rgb24",
               "-f", "rawvideo", "-"]
    done = subprocess.run(command, input=stdin, capture_output=True)
    if done.returncode != 0:
        raise VcraftError(f"cannot scale the control video: {done.stderr.decode(errors='replace').strip()[:200]}")
    return np.frombuffer(done.stdout, np.uint8).reshape(-1, height, width, 3)


def scaled_frames(video: Footage, height: int, width: int) -> np.ndarray:
    """Every frame of `video` at `height` x `width` (stretched, not cropped), uint8 `[T, H, W, 3]`: a video file
    scaled in its own pixel format as it is decoded, frames given as pixels (a PNG folder, an array) scaled as
    RGB."""
    if Path(video.source).is_file():
        return _ffmpeg(["-i", video.source], None, height, width)
    n, h, w, _ = video.frames.shape
    return _ffmpeg(["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-i", "-"], video.frames.tobytes(),
                   height, width)


def video_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 frames `[T, H, W, 3]` as the original's `load_video` returns them: `[1, 3, T, H, W]` in [-1, 1]."""
    return ((torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).float() / 255 - 0.5) * 2)[None]
