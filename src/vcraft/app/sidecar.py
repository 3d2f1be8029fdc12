"""The JSON sidecar beside every video: what it records (the model, the run's options that matter, the settings, each
input file's and LoRA's path and sha256), written with the video by video.write_video, and read back, for `--from`
and for the web app's list, with the defaults of older sidecars filled in."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vcraft import __version__
from vcraft.errors import VcraftError
from vcraft.pipeline.settings import INPUT_FILES, READERS, TYPES, Settings

if TYPE_CHECKING:
    from vcraft.app.render import Job
    from vcraft.pipeline.api import TextToVideo

# What sidecars written before a setting existed mean by its absence (or, for the negative prompt, a null).
OLDER = {"guidance_min_t": 0, "sampler": "ddim", "negative": "", "control_stride": -1}
NEEDED = ("model", *(k for k in TYPES if k not in INPUT_FILES))


def path_of(video: Path) -> Path:
    """A video's sidecar lives beside it: out.mp4 -> out.json, frames/ -> frames.json."""
    return video.with_suffix(".json") if video.suffix else video.with_name(video.name + ".json")


def fields(job: "Job", pipe: "TextToVideo", settings: Settings) -> dict[str, Any]:
    """What a video's sidecar records."""
    return {"model": job.config.name, "config": str(job.config_file.resolve()) if job.config_file else None,
            "ckpt": str(Path(job.ckpt).resolve()), "format": job.options.format, "overrides": list(job.overrides),
            "device": str(pipe.device), "dtype": str(pipe.dtype).removeprefix("torch."), "vcraft_version": __version__,
            "loras": [{"path": lora.source, "sha256": lora.sha256, "scale": scale}
                      for lora, scale in pipe.merged.loras],  # those merged now: the web app changes them
            "parts": {name: str(path.resolve()) for name, path in job.parts.items()},
            **settings.record()}


def text(recorded: dict[str, Any], frames_written: int) -> str:
    return json.dumps({**recorded, "frames_written": frames_written}, indent=2) + "\n"


def read(path: Path) -> dict[str, Any]:
    """A sidecar's fields, older ones' defaults filled in; a VcraftError for a file that is not a sidecar."""
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VcraftError(f"file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VcraftError(f"{path}: not a vcraft JSON sidecar ({exc})") from None
    if not isinstance(recorded, dict):
        raise VcraftError(f"{path}: not a vcraft JSON sidecar (it needs {', '.join(NEEDED)})")
    recorded = {**OLDER, **{k: v for k, v in recorded.items() if v is not None or k not in OLDER}}
    if any(k not in recorded for k in NEEDED):
        raise VcraftError(f"{path}: not a vcraft JSON sidecar (it needs {', '.join(NEEDED)})")
    return recorded


def recipe(path: Path) -> dict[str, Any]:
    """A sidecar's fields for making its video again (`--from`): each input file and LoRA read again, and refused if
    it is not the one the video was made from. The settings are checked where all settings are (make_settings)."""
    from vcraft.loaders.lora import read_lora

    try:
        recorded = read(path)
    except VcraftError as exc:
        raise VcraftError(f"--from: {exc}") from None
    try:
        for key in INPUT_FILES:
            if recorded.get(key) is not None:
                if recorded[key] == "array":
                    raise VcraftError(f"its {key!r} was given in Python as pixels, not as a file; it cannot be read "
                                      "again")
                recorded[key] = _unchanged(READERS[TYPES[key]](recorded[key]), recorded.get(f"{key}_sha256"))
        recorded["loras"] = [(_unchanged(read_lora(entry["path"]), entry["sha256"]), entry["scale"])
                             for entry in recorded.get("loras", [])]
    except VcraftError as exc:
        raise VcraftError(f"--from {path}: {exc}") from None
    return recorded


def _unchanged(given: Any, sha256: str | None) -> Any:
    """An input file read again (anything with `source` and `sha256`), refused if it is not the one recorded."""
    if sha256 is not None and given.sha256 != sha256:
        raise VcraftError(f"{given.source} has changed since the video was made (another sha256)")
    return given
