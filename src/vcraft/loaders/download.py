"""`vcraft download`: a preset's official checkpoint from the Hugging Face Hub, verified, then converted once.

The transfer is huggingface_hub's, so its cache, its resuming of dropped connections and its environment
(HF_HOME, HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE) apply as in every Hugging Face tool. vcraft adds the checksum,
the strict check against the preset's layout and the conversion to fp16 safetensors in its own cache.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Callable

from vcraft.config import Config, WeightsSource
from vcraft.errors import RunFailure, VcraftError
from vcraft.loaders.weights import PART_COMPONENTS, converted_path, hub_cached, size_text, weights_name

SHA256 = re.compile(r"[0-9a-f]{64}")
Log = Callable[[str], None]


def download(cfg: Config, log: Log, convert: bool = True, keep_ckpt: bool = False) -> Path:
    """Make the preset's weights present: the converted file in vcraft's cache (or, without `convert`, the
    checkpoint in the Hugging Face cache). Returns its path. The original checkpoint is removed from the
    Hugging Face cache after the conversion unless `keep_ckpt` or it was there before this call."""
    source = weights_source(cfg)
    target = converted_path(weights_name(cfg))
    for part in [*cfg.parts.values(), *([cfg.lora] if cfg.lora else [])]:  # kept as they are, in the Hugging Face cache
        if part.repo:
            download_file(part, log)
    if convert and target.is_file():
        log(f"{cfg.name}: already converted in {target}")
        return target
    was_cached = hub_cached(source) is not None
    ckpt = fetch(source, log)
    verify(ckpt, source, log)
    if not convert:
        return ckpt
    convert_checkpoint(cfg, ckpt, target, log)
    if not (keep_ckpt or was_cached):
        drop_from_hub_cache(ckpt)
        log(f"{cfg.name}: removed the original checkpoint from the Hugging Face cache (--keep-ckpt keeps it)")
    return target


def download_file(source: WeightsSource, log: Log) -> Path:
    """An official LoRA, adapter or depth estimator in the Hugging Face cache, verified; no conversion (vcraft reads
    it as it is)."""
    path = fetch(source, log)
    verify(path, source, log)
    return path


def weights_source(cfg: Config) -> WeightsSource:
    """Where the preset's weights come from; a VcraftError for a model that ships with vcraft."""
    if cfg.weights is None:
        raise VcraftError(f"model '{cfg.name}' ships with vcraft: there is nothing to download")
    return cfg.weights


def fetch(source: WeightsSource, log: Log) -> Path:
    """The file from the Hugging Face cache, downloaded into it first if it is not there."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    where = f"{source.repo}/{source.file}"
    log(f"fetching {where} into the Hugging Face cache {constants.HF_HUB_CACHE}")
    try:
        return Path(hf_hub_download(source.repo, source.file, revision=source.revision))
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else f"{constants.ENDPOINT} cannot be reached"
        raise RunFailure(f"cannot download {where}: {why} and the file is not in the Hugging Face cache; "
                         "connect to the network (or set HF_ENDPOINT to a mirror) and run the command again") from None
    except RepositoryNotFoundError:
        raise RunFailure(f"cannot download {where}: the repository is not on {constants.ENDPOINT}, or it is gated "
                         "or private (log in with `hf auth login` or set HF_TOKEN)") from None
    except HfHubHTTPError as exc:
        raise RunFailure(f"cannot download {where}: {str(exc).splitlines()[0]}") from None
    except OSError as exc:  # a transfer that broke off for good, a full disk
        raise RunFailure(f"cannot download {where}: {str(exc).splitlines()[0]}; run the command again") from None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(16 * 2**20):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path, source: WeightsSource, log: Log) -> None:
    """The file's sha256 must be the one pinned in the preset, else the one the Hub gave for it (the cache names
    a large file's blob by that checksum). A corrupt file is removed, so the next run fetches it afresh."""
    blob = path.resolve()
    expected = source.sha256 or (blob.name if SHA256.fullmatch(blob.name) else None)
    if expected is None:
        log(f"{source.file}: no checksum to compare with (the Hub gave none); its size was checked")
        return
    log(f"verifying the sha256 of {source.file} ({size_text(blob.stat().st_size)})")
    actual = sha256_of(blob)
    if actual != expected:
        drop_from_hub_cache(path)
        raise RunFailure(f"{source.repo}/{source.file} is corrupt: its sha256 is {actual[:16]}..., expected "
                         f"{expected[:16]}...; it was removed from the cache, run the command again to fetch it anew")


def convert_checkpoint(cfg: Config, ckpt: Path, target: Path, log: Log) -> None:
    """The checkpoint as fp16 safetensors at `target`, after checking that it fits the preset exactly. Reading
    runs no pickled code (checkpoints.load_state_dict); writing is atomic (temporary name, then rename)."""
    from vcraft.config import load_preset
    from vcraft.loaders.checkpoints import load_state_dict, save_state_dict
    from vcraft.loaders.components import without
    from vcraft.loaders.loading import build_models, fit_checkpoint

    log(f"{cfg.name}: converting to fp16 safetensors in {target}")
    state = load_state_dict(ckpt)
    owner = load_preset(cfg.weights_of) if cfg.weights_of else cfg  # the model these weights are
    kept = without(state, owner.parts)  # its own files give these components
    fit_checkpoint(build_models(owner.model), owner.model, kept, str(ckpt), separate=PART_COMPONENTS)
    target.parent.mkdir(parents=True, exist_ok=True)
    parts = ckpt.parts
    commit = parts[parts.index("snapshots") + 1] if "snapshots" in parts else "unknown"
    save_state_dict(state, target, "fp16", {"format": "vcraft", "preset": weights_name(cfg),
                                            "source": f"{cfg.weights.repo}@{commit}/{cfg.weights.file}"})


def drop_from_hub_cache(path: Path) -> None:
    """Remove one file from the Hugging Face cache: its snapshot entry, and its blob unless another snapshot
    of the repository still points at it."""
    blob = path.resolve()
    path.unlink(missing_ok=True)
    snapshots = blob.parent.parent / "snapshots"
    if blob != path and not any(p.is_symlink() and p.resolve() == blob for p in snapshots.rglob("*")):
        blob.unlink(missing_ok=True)


def hub_size(source: WeightsSource) -> int | None:
    """The file's size as the Hub reports it now; None when offline or unreachable."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url

    if constants.HF_HUB_OFFLINE:
        return None
    try:
        return get_hf_file_metadata(hf_hub_url(source.repo, source.file, revision=source.revision), timeout=5).size
    except Exception:  # any network or Hub problem: the listing falls back to the preset's number
        return None
