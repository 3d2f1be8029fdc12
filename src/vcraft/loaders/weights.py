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
from typing import Callable

from vcraft.config import Config, LoRASource, PartSource, WeightsSource, preset_dir
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


def weights_name(cfg: Config) -> str:
    """The name a preset's weights are found and converted under: its own, or that of the preset it shares them with."""
    return cfg.weights_of or cfg.name


def _places(cfg: Config) -> list[tuple[str, str, Callable[[], Path | None]]]:
    """Where the weights of the preset `cfg.name` may be, in the order they are looked in: (source, the place in
    words, a lookup that returns the file or None)."""
    places = []
    name = weights_name(cfg)
    if os.environ.get("VCRAFT_CHECKPOINTS"):
        own = Path(os.environ["VCRAFT_CHECKPOINTS"]) / name
        places.append(("VCRAFT_CHECKPOINTS", str(own), lambda: _in_folder(own)))
    converted = converted_path(name)
    places.append(("vcraft cache", str(converted.parent), lambda: converted if converted.is_file() else None))
    if cfg.weights is not None:
        source = cfg.weights
        places.append((HUB_CACHE, f"the {HUB_CACHE} ({source.repo})", lambda: hub_cached(source)))
    beside = preset_dir().parent / "checkpoints" / name
    places.append(("checkout" if cfg.weights else "bundled", str(beside), lambda: _in_folder(beside)))
    return places


def locate(cfg: Config) -> Found | None:
    """The first place that holds the weights of the preset `cfg.name`, or None."""
    for source, _, lookup in _places(cfg):
        path = lookup()
        if path is not None:
            return Found(path, source)
    return None


def size_text(size: int | None) -> str:
    if size is None:
        return "?"
    return f"{size / 1e9:.1f} GB" if size >= 1e9 else f"{size / 1e6:.0f} MB"


def find_checkpoint(cfg: Config) -> Path:
    """The checkpoint of a preset given no --ckpt; a VcraftError naming the command that fetches it if none."""
    found = locate(cfg)
    if found is not None:
        return found.path
    looked = f"looked in {', '.join(where for _, where, _ in _places(cfg))}"
    if cfg.weights is None:
        raise VcraftError(f"no weights for model '{cfg.name}' ({looked}); pass --ckpt PATH")
    size = f" ({size_text(cfg.weights.size)})" if cfg.weights.size else ""
    raise VcraftError(f"no weights for model '{cfg.name}' on this machine ({looked}); fetch them once with: "
                      f"vcraft download {cfg.name}{size}, or pass --ckpt PATH")


# Components that may come in files of their own, and the model config's section that makes them exist (None: every
# model has one, which a file replaces only where given or listed: a fine-tuned UNet, T2V-Turbo-v2's).
PART_COMPONENTS = {"adapter": "adapter", "depth_estimator": "depth", "unet": None}


def _own_file(cfg: Config, source: PartSource | None, names: tuple[str, ...]) -> Path | None:
    """A preset's own file (a part, its LoRA): the `path` its source names (whether or not it exists), else the first of
    `names` in `$VCRAFT_CHECKPOINTS/<preset>/` or beside the presets, else the source's file in the Hugging Face cache;
    None where none holds it."""
    if source is not None and source.path:
        return Path(source.path)
    folders = [Path(os.environ["VCRAFT_CHECKPOINTS"]) / cfg.name] if os.environ.get("VCRAFT_CHECKPOINTS") else []
    folders.append(preset_dir().parent / "checkpoints" / cfg.name)
    found = next((f / n for f in folders for n in names if (f / n).is_file()), None)
    if found is None and source is not None and source.repo:
        found = hub_cached(source)
    return found


def _wanted(cfg: Config, given: dict[str, Path]) -> list[str]:
    """The components whose own files are looked for."""
    return [name for name, section in PART_COMPONENTS.items()
            if (name in given or name in cfg.parts if section is None else getattr(cfg.model, section) is not None)]


def find_parts(cfg: Config, given: dict[str, Path]) -> dict[str, Path]:
    """The own files of the model's separate components, by component name: `given` ones (--adapter, --unet), else the
    config's `parts` entry where it names a path, else `<name>.safetensors` in `$VCRAFT_CHECKPOINTS/<preset>/` or
    beside the presets, else the Hugging Face cache. A part the config lists and no place holds is a VcraftError
    naming the command that fetches it (or the option that gives it, for a listed part with no source: an original
    YAML's adapter); an unlisted one (a checkpoint may hold it) is simply absent."""
    from vcraft.loaders.components import BY_NAME

    found = {}
    for name in _wanted(cfg, given):
        source = cfg.parts.get(name)
        if name in given:
            path = given[name]
        else:
            path = _own_file(cfg, source, (f"{name}.safetensors",))
            if path is None and source is not None:
                how = f"fetch it once with: vcraft download {cfg.name}" if source.repo else \
                    f"give it with --{name} PATH" if name in ("adapter", "unet") else \
                    f"set parts.{name}.path in the config"
                raise VcraftError(f"the {BY_NAME[name].label} of model '{cfg.name}' is not on this machine; {how}")
        if path is not None:
            if not Path(path).is_file():
                raise VcraftError(f"{BY_NAME[name].label} file not found: {path}")
            found[name] = Path(path)
    return found


def find_merged_lora(cfg: Config) -> Path | None:
    """The file of the LoRA the preset merges into its weights (`cfg.lora`), if it has one; a VcraftError naming the
    command that fetches it when it is not on this machine."""
    source = cfg.lora
    if source is None:
        return None
    path = _own_file(cfg, source, ("lora.safetensors", "lora.pt"))
    if path is None or not path.is_file():
        how = f"fetch it once with: vcraft download {cfg.name}" if source.repo else "set lora.path in the config"
        raise VcraftError(f"the LoRA that model '{cfg.name}' is made of is not on this machine; {how}")
    return path


def official_loras() -> dict[str, tuple[Config, LoRASource]]:
    """Every preset's official LoRAs by name, with the preset they are for."""
    from vcraft.config import load_preset, preset_names

    return {name: (cfg, source) for cfg in map(load_preset, preset_names()) for name, source in cfg.loras.items()}


def find_lora(name: str) -> Path | None:
    """The file of the official LoRA `name` in the Hugging Face cache; None for a name no preset has; a VcraftError
    naming the command that fetches it when it is not on this machine."""
    known = official_loras().get(name)
    if known is None:
        return None
    path = hub_cached(known[1])
    if path is None:
        raise VcraftError(f"the LoRA '{name}' (for {known[0].name}) is not on this machine; fetch it once with: "
                          f"vcraft download {name}")
    return path
