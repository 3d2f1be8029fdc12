"""Your own clips for `vcraft train lora`: a folder of videos with a caption beside each (`clip.mp4` + `clip.txt`, as
musubi-tuner lays them out; MP4, GIF or a folder of PNG frames), or a `.csv`/`.jsonl` of path and caption (as
VideoTuna's), paths relative to the file. Every clip is read and checked before any training, and a bad one is one
error naming its file.

A clip becomes `frames` frames: every `stride`-th from its first (or, with a target fps, the stride that comes
closest to it), scaled to cover the model's size and cropped at the centre.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from vcraft.errors import VcraftError
from vcraft.pipeline.inputs import read_footage

VIDEO_SUFFIXES = (".mp4", ".gif", ".webm", ".mov", ".mkv")


@dataclass(frozen=True)
class Clip:
    path: Path
    caption: str


@dataclass(frozen=True)
class Framing:
    """How clips are read: `frames` of `height` x `width`, every `stride`-th frame, or the stride nearest to `fps`."""

    frames: int
    height: int
    width: int
    stride: int = 1
    fps: Optional[float] = None

    def check(self, multiple: int) -> None:
        """`multiple`: what the model's height and width must be multiples of."""
        problems = [
            (self.frames >= 1, f"--frames must be at least 1, got {self.frames}"),
            (self.height >= multiple and self.height % multiple == 0 and self.width >= multiple
             and self.width % multiple == 0, f"--height and --width must be positive multiples of {multiple}, got "
                                             f"{self.height}x{self.width}"),
            (self.stride >= 1, f"--stride must be at least 1, got {self.stride}"),
            (self.fps is None or self.fps > 0, f"--fps must be positive, got {self.fps}"),
        ]
        problem = next((message for ok, message in problems if not ok), None)
        if problem:
            raise VcraftError(problem)


def find_clips(data: Path) -> list[Clip]:
    """The clips of a folder (each video or PNG folder with a `.txt` beside it) or of a `.csv`/`.jsonl` list."""
    if not data.exists():
        raise VcraftError(f"training data not found: {data}")
    if data.is_file():
        return _listed(data)
    clips = []
    for path in sorted(data.iterdir()):
        is_frames = path.is_dir() and any(path.glob("*.png"))
        if not (is_frames or path.suffix.lower() in VIDEO_SUFFIXES):
            continue
        caption = path.with_name(path.stem + ".txt") if path.is_file() else path.with_name(path.name + ".txt")
        if not caption.is_file():
            raise VcraftError(f"{path} has no caption: write it in {caption}")
        clips.append(Clip(path, caption.read_text(encoding="utf-8").strip()))
    if not clips:
        raise VcraftError(f"{data} has no clips: put videos (MP4, GIF) or folders of PNG frames there, each with its "
                          "caption in a .txt file of the same name")
    return clips


def _listed(listing: Path) -> list[Clip]:
    """Rows of (path, caption) from a `.csv` with those columns or a `.jsonl` of {"path", "caption"} objects."""
    if listing.suffix not in (".csv", ".jsonl"):
        raise VcraftError(f"{listing}: give a folder of clips, or a .csv or .jsonl list of path and caption")
    text = listing.read_text(encoding="utf-8")
    try:
        rows = list(csv.DictReader(text.splitlines())) if listing.suffix == ".csv" else \
            [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise VcraftError(f"{listing}: not JSON lines ({exc})") from None
    clips = []
    for number, row in enumerate(rows, 2 if listing.suffix == ".csv" else 1):
        if not isinstance(row, dict) or not row.get("path") or not str(row.get("caption") or "").strip():
            raise VcraftError(f"{listing}:{number}: each row needs a path and a caption")
        clips.append(Clip(listing.parent / row["path"], str(row["caption"]).strip()))
    if not clips:
        raise VcraftError(f"{listing} lists no clips")
    return clips


def read_clip(clip: Clip, framing: Framing) -> np.ndarray:
    """The clip's frames as the model takes them, uint8 `[frames, height, width, 3]`; a VcraftError naming the file
    when it cannot be read or is too short."""
    try:
        video = read_footage(clip.path)
    except VcraftError as exc:
        raise VcraftError(f"{clip.path}: {exc}") from None
    stride = framing.stride
    if framing.fps is not None:
        if not video.fps:
            raise VcraftError(f"{clip.path} does not say its frame rate; give --stride instead of --fps")
        stride = max(1, round(video.fps / framing.fps))
    needed = (framing.frames - 1) * stride + 1
    if len(video.frames) < needed:
        raise VcraftError(f"{clip.path} has {len(video.frames)} frames; {framing.frames} frames at a stride of "
                          f"{stride} need {needed}")
    return _cover_crop(video.frames[:needed:stride], framing.height, framing.width)


def _cover_crop(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Scaled (bilinear, antialiased) so that they cover height x width, then cropped at the centre."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    scale = max(height / x.shape[2], width / x.shape[3])
    size = (max(height, round(x.shape[2] * scale)), max(width, round(x.shape[3] * scale)))
    if size != tuple(x.shape[2:]):
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    top, left = (size[0] - height) // 2, (size[1] - width) // 2
    x = x[:, :, top:top + height, left:left + width]
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def read_clips(clips: list[Clip], framing: Framing, trigger: str = "") -> tuple[np.ndarray, list[str]]:
    """Every clip read (`[n, frames, height, width, 3]` uint8) and its caption with the trigger phrase appended as
    written (as the VideoLoRA files' triggers are: `"a fox" + ", Loving Vincent style"`)."""
    videos = np.stack([read_clip(clip, framing) for clip in clips])
    return videos, [clip.caption + trigger for clip in clips]
