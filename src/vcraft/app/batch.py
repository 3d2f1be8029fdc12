"""A run of many videos: plan every video (its settings and output path) and check it all, output folders
included, before any heavy work.

Video k of a run, in output order (every sample of every prompt), gets seed `base + k`, unless its row
gives a seed, which then belongs to its first sample (`seed + j` for sample j). Every value is checked where all
settings are (pipeline/settings.make_settings), and reported with its row's file and line. Every video is sampled on
its own, so its pixels depend on its settings alone, not on the others of the run.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from vcraft.app.options import STDOUT, RunOptions
from vcraft.app.prompts import PromptRow
from vcraft.config import Config
from vcraft.errors import VcraftError
from vcraft.pipeline.settings import Settings, make_settings

DEFAULT_NAME = "{index:04d}-{slug}-{seed}"
NAME_FIELDS = ("index", "slug", "seed", "sample", "prompt")


@dataclass(frozen=True)
class Video:
    index: int
    sample: int
    settings: Settings
    path: Path  # STDOUT: the bytes go to standard output
    where: str  # where the prompt came from, for messages


def slug(text: str, limit: int = 48) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].rstrip("-") or "video"


def _name(template: str, where: str, **fields: Any) -> str:
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


def _settings(config: Config, row: PromptRow, chosen: dict[str, Any], seed: int) -> Settings:
    values = {**chosen, **{k: v for k, v in row.settings.items() if k not in ("seed", "name")}, "seed": seed}
    try:
        return make_settings(config, row.prompt, **values)
    except VcraftError as exc:
        raise VcraftError(f"{row.where}: {exc}" if row.where != "argument" else str(exc)) from None


def plan(rows: list[PromptRow], config: Config, chosen: dict[str, Any], base_seed: int, samples: int,
         options: RunOptions) -> list[Video]:
    """Every video of the run with its checked settings (`chosen`: the run's settings, None where not given,
    under each row's own) and output path; raises VcraftError (naming the prompt's file and line) for
    anything wrong, an output that cannot be written included, before a model is loaded."""
    if samples < 1:
        raise VcraftError(f"--samples must be at least 1, got {samples}")
    count = len(rows) * samples
    fmt, overwrite, skip_existing = options.format, options.overwrite, options.skip_existing
    suffix = "" if fmt == "png" else f".{fmt}"
    single, folder = _destination(options.output, fmt, suffix, count)

    videos: list[Video] = []
    taken: dict[Path, str] = {}
    for row in rows:
        for j in range(samples):
            index = len(videos)
            # A row's own seed, checked with its first sample's settings, counts on for its next samples.
            seed = videos[-1].settings.seed + 1 if j else row.settings.get("seed", base_seed + index)
            settings = _settings(config, row, chosen, seed)
            if single is not None:
                path = single
            else:
                template = row.settings.get("name", options.name or DEFAULT_NAME)
                path = folder / (_name(template, row.where, index=index, slug=slug(row.prompt), seed=seed,
                                       sample=j, prompt=row.prompt) + suffix)
            if path in taken:
                raise VcraftError(f"{row.where}: {path} would be written twice (also by {taken[path]}); add "
                                  "{index}, {seed} or {sample} to the name")
            taken[path] = row.where
            videos.append(Video(index, j, settings, path, row.where))
    for video in videos:
        path = video.path
        if path == STDOUT or skip_existing:
            continue
        exists = path.exists() and not (path.is_dir() and not any(path.iterdir()))
        if exists and not overwrite:
            raise VcraftError(f"{path} already exists; use --overwrite to replace it or --skip-existing to keep it")
        if path.is_dir() and fmt != "png":
            raise VcraftError(f"{path} is a folder; give a file name ending in {suffix}")
    for parent in dict.fromkeys(v.path.parent for v in videos if v.path != STDOUT):
        check_writable(parent)
    return videos


def check_writable(folder: Path) -> None:
    """Videos can be written into `folder`: it is made (with its parents) and a file is written in it, then
    both are removed again, so a bad output is found before any heavy work and nothing is left behind."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".vcraft-check-"):
            pass
    except OSError as exc:
        raise VcraftError(f"cannot write videos to {folder} ({exc.strerror or exc}); choose another -o") from None
    finally:
        for made in missing:  # innermost first; only folders left empty
            try:
                os.rmdir(made)
            except OSError:
                pass
