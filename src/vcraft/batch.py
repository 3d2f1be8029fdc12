"""A run of many videos: plan every video (prompt, seed, settings, output path) and check it all before any
heavy work, then render them, several at a time where their settings allow.

Video k of a run, in output order (every sample of every prompt), gets seed `base + k`, unless its row
gives a seed, which then belongs to its first sample (`seed + j` for sample j). Its noise comes from its
seed alone, so its pixels do not depend on which other videos share its batch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from vcraft.config import ModelConfig, SamplingConfig, validate_sampling
from vcraft.errors import VcraftError
from vcraft.prompts import PromptRow

DEFAULT_NAME = "{index:04d}-{slug}-{seed}"
NAME_FIELDS = ("index", "slug", "seed", "sample", "prompt")
STDOUT = Path("-")


@dataclass(frozen=True)
class Video:
    index: int
    sample: int
    prompt: str
    negative: Optional[str]
    seed: int
    settings: SamplingConfig  # validated
    path: Path  # STDOUT: the bytes go to standard output
    where: str  # where the prompt came from, for messages


def slug(text: str, limit: int = 48) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].rstrip("-") or "video"


def _name(template: str, where: str, **fields) -> str:
    try:
        name = template.format(**fields)
    except (KeyError, IndexError, ValueError) as exc:
        raise VcraftError(f"{where}: bad name template {template!r} ({exc}); use fields "
                          f"{', '.join('{' + f + '}' for f in NAME_FIELDS)}") from None
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise VcraftError(f"{where}: the name {name!r} is not a file name")
    return name


def _destination(output: Optional[Path], fmt: str, suffix: str, count: int) -> tuple[Optional[Path], Path]:
    """(the one output, or None; the folder for named videos). `-o` names the one video's file (PNG: its
    folder) when it has the format's extension, else a folder of videos; `-o -` is stdout."""
    if output == STDOUT:
        if count != 1 or fmt == "png":
            raise VcraftError("-o - writes one MP4 or GIF video to stdout; give one prompt and no --samples, "
                              "or an output folder")
        return STDOUT, Path()
    if output is not None and fmt != "png" and output.suffix and not output.is_dir():
        if output.suffix.lower() != suffix:
            raise VcraftError(f"-o {output}: the extension does not match --format {fmt}; use {suffix} or a folder")
        if count > 1:
            raise VcraftError(f"-o {output} names one file but {count} videos are made; give a folder instead")
        return output, Path()
    if output is not None and fmt == "png" and count == 1:
        return output, Path()
    folder = output or Path("outputs")
    if folder.exists() and not folder.is_dir():
        raise VcraftError(f"{folder} is a file; with several videos -o must be a folder")
    return None, folder


def plan(rows: list[PromptRow], base: SamplingConfig, model: ModelConfig, base_seed: int, samples: int,
         negative: Optional[str], name: str, output: Optional[Path], fmt: str, overwrite: bool,
         skip_existing: bool) -> list[Video]:
    """Every video of the run with its checked settings and output path; raises VcraftError (naming the
    prompt's file and line) for anything wrong, before a model is loaded."""
    if samples < 1:
        raise VcraftError(f"--samples must be at least 1, got {samples}")
    if overwrite and skip_existing:
        raise VcraftError("give either --overwrite or --skip-existing, not both")
    count = len(rows) * samples
    suffix = "" if fmt == "png" else f".{fmt}"
    single, folder = _destination(output, fmt, suffix, count)

    videos, taken = [], {}
    for row in rows:
        fields = {k: v for k, v in row.settings.items() if k in SamplingConfig.__dataclass_fields__}
        try:
            settings = validate_sampling(replace(base, **fields), model)
        except VcraftError as exc:
            raise VcraftError(f"{row.where}: {exc}" if row.where != "argument" else str(exc)) from None
        for j in range(samples):
            index = len(videos)
            seed = row.settings["seed"] + j if "seed" in row.settings else base_seed + index
            if not 0 <= seed < 2**63:
                raise VcraftError(f"{row.where}: seed {seed} is out of range (0 to 2^63 - 1)")
            if single is not None:
                path = single
            else:
                template = row.settings.get("name", name)
                path = folder / (_name(template, row.where, index=index, slug=slug(row.prompt), seed=seed,
                                       sample=j, prompt=row.prompt) + suffix)
            if path in taken:
                raise VcraftError(f"{row.where}: {path} would be written twice (also by {taken[path]}); add "
                                  "{index}, {seed} or {sample} to the name")
            taken[path] = row.where
            videos.append(Video(index, j, row.prompt, row.settings.get("negative", negative), seed, settings,
                                path, row.where))
    for video in videos:
        path = video.path
        if path == STDOUT or skip_existing:
            continue
        exists = path.exists() and not (path.is_dir() and not any(path.iterdir()))
        if exists and not overwrite:
            raise VcraftError(f"{path} already exists; use --overwrite to replace it or --skip-existing to keep it")
        if path.is_dir() and fmt != "png":
            raise VcraftError(f"{path} is a folder; give a file name ending in {suffix}")
    return videos


def batches(videos: list[Video], size: int, clip: int) -> Iterator[list[Video]]:
    """Consecutive videos with the same settings, up to `size` at a time; videos longer than the model's
    clip go alone, since they are written window by window."""
    current: list[Video] = []
    for video in videos:
        if current and (len(current) == size or video.settings != current[0].settings
                        or video.settings.frames > clip):
            yield current
            current = []
        current.append(video)
    if current:
        yield current


def render(pipe, group: list[Video], callback: Optional[Callable[[int, int], None]] = None
           ) -> Iterator[tuple[Video, Iterator[np.ndarray]]]:
    """Sample the videos of one batch together; yield each video with its uint8 frame chunks, decoded as
    they are consumed. A video whose latents are not finite raises when its chunks are read, so that
    the others of its batch still get written."""
    s = group[0].settings
    cond = pipe.encode_prompts([v.prompt for v in group])
    uncond = pipe.encode_prompts([v.negative or "" for v in group]) if s.guidance != 1.0 else None
    windows = pipe.sample_long(cond, uncond, [v.seed for v in group], s, callback)
    if len(group) == 1:
        yield group[0], (chunk[0].numpy() for latents in windows for chunk in _decoded(pipe, latents))
        return
    latents = next(windows)  # batched videos fit in one window
    for i, video in enumerate(group):
        yield video, (chunk[0].numpy() for chunk in _decoded(pipe, latents[i:i + 1]))


def _decoded(pipe, latents):
    if not latents.isfinite().all():
        raise FloatingPointError("the sampler produced NaN or infinite latents (try --dtype fp32)")
    yield from pipe.decode(latents)
