"""Frames to pixels and pixels to files: MP4 (H.264, yuv420p), GIF, or a folder of lossless PNG frames, fed
chunk by chunk.

Outputs appear atomically: everything is written under a temporary name in the same folder and renamed
at the end, so an interrupted or failed render leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterable

import numpy as np

from vcraft.app import sidecar

FORMATS = ("mp4", "gif", "png")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _replace(tmp: Path, path: Path) -> None:
    if path.is_dir() and not path.is_symlink():  # os.replace cannot replace a non-empty folder
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old)
    else:
        os.replace(tmp, path)


def _partial_prefix(path: Path) -> str:
    """How the temporary names of `path` and of its sidecar (the same stem) begin, whichever process writes."""
    return f".{path.stem}.partial-"


def _partial(path: Path) -> Path:
    """The temporary name of `path` while this process writes it (the suffix stays last: ffmpeg picks the
    container from it)."""
    return path.with_name(f"{_partial_prefix(path)}{os.getpid()}{path.suffix}")


def remove_partials(paths: Iterable[Path]) -> None:
    """Remove what any process left half-written of these outputs or their sidecars (a worker that was
    killed cannot clean up after itself)."""
    prefixes: dict[Path, list[str]] = {}
    for path in paths:
        prefixes.setdefault(path.parent, []).append(_partial_prefix(path))
    for folder, starts in prefixes.items():
        if folder.is_dir():
            for entry in folder.iterdir():
                if entry.name.startswith(tuple(starts)):
                    _remove(entry)


def write_video(path: str | os.PathLike, chunks: Iterable[np.ndarray], fmt: str, fps: float,
                metadata: dict | None = None) -> Path:
    """Write uint8 frame chunks `[n, H, W, 3]` to `path`; with `metadata` (sidecar.fields), also its sidecar."""
    import imageio.v2 as imageio

    path = Path(path)
    tmp = _partial(path)
    side, side_tmp = sidecar.path_of(path), None
    count = 0
    try:
        if fmt == "png":
            tmp.mkdir(parents=True)
            for chunk in chunks:
                for frame in chunk:
                    imageio.imwrite(tmp / f"frame_{count:05d}.png", frame)
                    count += 1
        else:
            options = (
                # crf 10 as the reference writes; macro_block_size=1 keeps the exact size (no resizing).
                {"fps": fps, "codec": "libx264", "pixelformat": "yuv420p", "macro_block_size": 1,
                 "ffmpeg_params": ["-crf", "10"], "format": "FFMPEG"}
                if fmt == "mp4" else {"duration": 1000.0 / fps, "loop": 0, "format": "GIF"}
            )
            with imageio.get_writer(tmp, **options) as writer:
                for chunk in chunks:
                    for frame in chunk:
                        writer.append_data(np.ascontiguousarray(frame))
                        count += 1
        if metadata is not None:
            side_tmp = _partial(side)
            side_tmp.write_text(sidecar.text(metadata, count))
        _replace(tmp, path)
        if side_tmp is not None:
            os.replace(side_tmp, side)
    except BaseException:
        _remove(tmp)
        if side_tmp is not None:
            _remove(side_tmp)
        raise
    return path
