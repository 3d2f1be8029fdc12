"""Where a model's weights are on this machine. Looking never touches the network.

A preset without `--ckpt` is looked for, in this order: `$VCRAFT_CHECKPOINTS/<preset>/`, vcraft's own cache of
converted weights (`$VCRAFT_HOME/models/<preset>/`), the Hugging Face cache (what `vcraft download` or any other
Hugging Face tool fetched), and `checkpoints/<preset>/` beside the presets (a checkout, or the installed package
for the embedded model).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from vcraft.config import Config, WeightsSource, preset_dir
from vcraft.errors import VcraftError

CHECKPOINT_NAMES = ("model.safetensors", "model.ckpt")
HUB_CACHE = "Hugging Face cache"


@dataclass(frozen=True)
class Found:
    path: Path
    source: str  # VCRAFT_CHECKPOINTS, vcraft cache, Hugging Face cache, checkout, or bundled (the embedded model)


def vcraft_home() -> Path:
    """vcraft's own folder for converted weights: $VCRAFT_HOME, else the platform's user cache folder."""
    if os.environ.get("VCRAFT_HOME"):
        return Path(os.environ["VCRAFT_HOME"])
    import platformdirs

    return Path(platformdirs.user_cache_dir("vcraft"))


def converted_path(name: str) -> Path:
    """Where `vcraft download` keeps a preset's weights converted to fp16 safetensors."""
    return vcraft_home() / "models" / name / "model.safetensors"


def _in_folder(folder: Path) -> Path | None:
    return next((folder / n for n in CHECKPOINT_NAMES if (folder / n).is_file()), None)


def hub_cached(source: WeightsSource) -> Path | None:
    """The file in the Hugging Face cache ($HF_HOME, $HF_HUB_CACHE), if it is there; no network access."""
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(source.repo, source.file, revision=source.revision)
    return Path(path) if isinstance(path, str) else None


def places(cfg: Config) -> list[str]:
    """The places `locate` looks in, for messages."""
    where = []
    if os.environ.get("VCRAFT_CHECKPOINTS"):
        where.append(str(Path(os.environ["VCRAFT_CHECKPOINTS"]) / cfg.name))
    where.append(str(converted_path(cfg.name).parent))
    if cfg.weights is not None:
        where.append(f"the {HUB_CACHE} ({cfg.weights.repo})")
    return [*where, str(preset_dir().parent / "checkpoints" / cfg.name)]


def locate(cfg: Config) -> Found | None:
    """The first place that holds the weights of the preset `cfg.name`, or None."""
    if os.environ.get("VCRAFT_CHECKPOINTS"):
        path = _in_folder(Path(os.environ["VCRAFT_CHECKPOINTS"]) / cfg.name)
        if path:
            return Found(path, "VCRAFT_CHECKPOINTS")
    if converted_path(cfg.name).is_file():
        return Found(converted_path(cfg.name), "vcraft cache")
    if cfg.weights is not None:
        path = hub_cached(cfg.weights)
        if path:
            return Found(path, HUB_CACHE)
    path = _in_folder(preset_dir().parent / "checkpoints" / cfg.name)
    if path is None:
        return None
    return Found(path, "checkout" if cfg.weights else "bundled")


def size_text(size: int | None) -> str:
    if size is None:
        return "?"
    return f"{size / 1e9:.1f} GB" if size >= 1e9 else f"{size / 1e6:.0f} MB"


def find_checkpoint(cfg: Config) -> Path:
    """The checkpoint of a preset given no --ckpt; a VcraftError naming the command that fetches it if none."""
    found = locate(cfg)
    if found is not None:
        return found.path
    looked = f"looked in {', '.join(places(cfg))}"
    if cfg.weights is None:
        raise VcraftError(f"no weights for model '{cfg.name}' ({looked}); pass --ckpt PATH")
    size = f" ({size_text(cfg.weights.size)})" if cfg.weights.size else ""
    raise VcraftError(f"no weights for model '{cfg.name}' on this machine ({looked}); fetch them once with: "
                      f"vcraft download {cfg.name}{size}, or pass --ckpt PATH")
