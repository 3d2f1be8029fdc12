"""LoRA files merged into a loaded model's weights, `W += scale * factor * up @ down`: no cost per step, and undone
exactly (the touched weights are kept as they were).

Three formats, told apart by their keys:
- **VideoLoRA** (VideoCrafter's first release, `.ckpt` or the same as safetensors): `<module path from the checkpoint's
  root>.lora_up.weight` / `.lora_down.weight`, factor 1 (no rank or alpha scaling), as the release's
  `net_load_lora` merges them. Like it, a pair for a module that is not exactly a Linear or a 2D convolution is
  skipped, and so is any `.alpha` key.
- **kohya** (safetensors): `lora_unet_<UNet module path, dots as underscores>` and `lora_te_<CLIPTextModel module
  path>` with `.lora_up.weight`, `.lora_down.weight` and `.alpha`; factor alpha / rank (1 without alpha).
- **PEFT** (diffusers, VideoTuna): `[base_model.model.]<module path from the checkpoint's root, or from the UNet>` with
  `.lora_A.weight` (down) and `.lora_B.weight` (up), or for a token embedding `.lora_embedding_A` `[r, vocab]` and
  `.lora_embedding_B` `[dim, r]`; factor `lora_alpha / r` from an `adapter_config.json` beside the file, else from
  the safetensors metadata `lora_adapter_metadata` that diffusers writes (1 without either).
- **ordered** (T2V-Turbo's `unet_lora.pt`): an unnamed list `[up, down, up, down, ...]`, one pair for every Linear,
  Conv2d and Conv3d of the UNet in the order the original registers them (which the UNet's own follows), factor 1.
kohya and PEFT pairs may touch any Linear or convolution (PEFT's also an embedding). Every name must name a module of
the model.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from vcraft.config import ModelConfig
from vcraft.errors import VcraftError
from vcraft.loaders.checkpoints import load_state_dict, stored_metadata
from vcraft.loaders.components import BY_NAME, Models, route
from vcraft.loaders.download import sha256_of
from vcraft.loaders.weights import find_lora

# The suffixes of a pair's tensors (up, down) in each format.
SUFFIXES = {"videolora": (".lora_up.weight", ".lora_down.weight"), "kohya": (".lora_up.weight", ".lora_down.weight"),
            "peft": (".lora_B.weight", ".lora_A.weight")}
RELEASE_KINDS = (nn.Linear, nn.Conv2d)  # the only classes a VideoLoRA pair is merged into (exactly these)
ANY_KINDS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)
KOHYA = {"lora_unet_": "unet", "lora_te_": "text_encoder"}
PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class LoRA:
    """A LoRA file read once: where it came from, its sha256, its format, and its pairs by the format's layer name:
    (up, down, factor)."""

    source: str
    sha256: str
    format: str  # videolora, kohya, peft or ordered
    trigger: str  # the words its file says to put in the prompt (safetensors metadata `trigger`), or ""
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = field(repr=False, compare=False)


def _format(keys: list[str]) -> str:
    if keys and all(k.isdigit() for k in keys):
        return "ordered"
    if any(k.endswith((".lora_A.weight", ".lora_embedding_A")) for k in keys):
        return "peft"
    return "kohya" if any(k.startswith(tuple(KOHYA)) for k in keys) else "videolora"


def _embedding_pairs(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """PEFT's embedding pairs as the up and down of a weight `[vocab, dim]`: `A.T @ B.T` is its update."""
    out = {}
    for key, value in state.items():
        for own, pair in ((".lora_embedding_A", ".lora_B.weight"), (".lora_embedding_B", ".lora_A.weight")):
            if key.endswith(own):
                key, value = key[:-len(own)] + pair, value.T.contiguous()
        out[key] = value
    return out


def _peft_config(path: Path) -> dict:
    """`r` and `lora_alpha` of a PEFT file: its adapter_config.json, else diffusers' metadata (whose keys may carry a
    component's prefix, `unet.r`), else {}."""
    beside = path.parent / "adapter_config.json"
    if beside.is_file():
        return json.loads(beside.read_text())
    stored = json.loads(stored_metadata(path).get("lora_adapter_metadata", "{}"))
    config = {key.rpartition(".")[2]: value for key, value in stored.items()}
    return config if "r" in config else {}


def open_lora(spec: str | os.PathLike) -> LoRA:
    """A LoRA file by its path, or an official LoRA by its name (`loving-vincent`) from the Hugging Face cache."""
    official = None if Path(spec).exists() else find_lora(str(spec))
    return read_lora(official or spec)


def read_lora(path: str | os.PathLike) -> LoRA:
    """A LoRA file of one of the formats above (read without running code); a VcraftError for anything else."""
    path = Path(path)
    try:
        state = load_state_dict(path, listed=True)
    except VcraftError as exc:
        raise VcraftError(f"LoRA: {exc}") from None
    kind = _format(list(state))
    if kind == "ordered":
        if len(state) % 2:
            raise VcraftError(f"{path} is not a LoRA file: an unnamed list of {len(state)} tensors, not pairs of up "
                              "and down weights")
        pairs = {str(i): (state[str(2 * i)], state[str(2 * i + 1)], 1.0) for i in range(len(state) // 2)}
        return LoRA(str(path.resolve()), sha256_of(path), kind, "", pairs)
    if kind == "peft":
        state = _embedding_pairs(state)
    up_suffix, down_suffix = SUFFIXES[kind]
    ups = {k[:-len(up_suffix)]: v for k, v in state.items() if k.endswith(up_suffix)}
    downs = {k[:-len(down_suffix)]: v for k, v in state.items() if k.endswith(down_suffix)}
    other = [k for k in state if not k.endswith((up_suffix, down_suffix)) and not k.endswith(".alpha")]
    if not ups or other or ups.keys() != downs.keys():
        example = other[0] if other else next(iter(ups.keys() ^ downs.keys()), None)
        raise VcraftError(f"{path} is not a LoRA file (pairs of up and down weights in the VideoLoRA, kohya or PEFT "
                          "layout)" + (f": '{example}'" if example else ""))
    factors = {name: 1.0 for name in ups}
    if kind == "kohya":
        factors = {name: float(state[f"{name}.alpha"]) / downs[name].shape[0] if f"{name}.alpha" in state else 1.0
                   for name in ups}
    elif kind == "peft":
        config = _peft_config(path)
        if config:
            factors = dict.fromkeys(ups, config.get("lora_alpha", config["r"]) / config["r"])
        ups = {name.removeprefix(PEFT_PREFIX): v for name, v in ups.items()}
        downs = {name.removeprefix(PEFT_PREFIX): v for name, v in downs.items()}
        factors = {name.removeprefix(PEFT_PREFIX): v for name, v in factors.items()}
    digest = sha256_of(path)
    trigger = stored_metadata(path).get("trigger", "")
    return LoRA(str(path.resolve()), digest, kind, trigger, {k: (ups[k], downs[k], factors[k]) for k in sorted(ups)})


def _official(models: Models, cfg: ModelConfig, path: str) -> nn.Module | None:
    """The module an official-layout path names: its component by the table, its name as the component renames it."""
    found = route(path + ".weight")
    module = None if found is None else getattr(models, found[0].name)
    if module is None:
        return None
    key = next(iter(found[0].rename({found[1]: torch.empty(0)}, cfg, module)), "").removesuffix(".weight")
    try:
        return module.get_submodule(key)
    except AttributeError:
        return None


def _kohya_names(models: Models) -> dict[str, nn.Module]:
    """Every module by its kohya name: the UNet's official paths, the text tower's as in CLIPTextModel."""
    names = {}
    for start, component in KOHYA.items():
        module = getattr(models, component)
        for path, layer in (module.named_modules() if module is not None else ()):
            if component == "text_encoder":
                path = path.removeprefix("transformer.")
                path = path if path.startswith("text_model.") else f"text_model.{path}"
            names[start + path.replace(".", "_")] = layer
    return names


def ordered_layers(unet: nn.Module) -> list[tuple[str, nn.Module]]:
    """The UNet's Linear and 2D/3D convolution layers in registration order: what an ordered LoRA's pairs are for."""
    return [(name, m) for name, m in unet.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv3d))]


def _ordered_modules(models: Models, lora: LoRA) -> dict[str, tuple[str, nn.Module]]:
    layers = ordered_layers(models.unet)
    if len(layers) != len(lora.pairs):
        raise VcraftError(f"{lora.source} does not fit this model: it holds {len(lora.pairs)} unnamed pairs, one for "
                          f"each layer of a UNet in order, and this model's UNet has {len(layers)} such layers (a "
                          "LoRA for another model?)")
    return {str(i): layer for i, layer in enumerate(layers)}


def _modules(models: Models, cfg: ModelConfig, lora: LoRA) -> dict[str, tuple[str, nn.Module]]:
    """The module of every pair of `lora`, with its path for messages; a VcraftError naming the first one the model does
    not have."""
    if lora.format == "ordered":
        return _ordered_modules(models, lora)
    kohya = _kohya_names(models) if lora.format == "kohya" else {}
    found = {}
    for name in lora.pairs:
        if lora.format == "kohya":
            module = kohya.get(name)
        else:
            module = _official(models, cfg, name)
            if module is None and lora.format == "peft":  # PEFT names may start at the UNet
                module = _official(models, cfg, BY_NAME["unet"].prefix + name)
        if module is None:
            raise VcraftError(f"{lora.source} does not fit this model: it names '{name}', which the model does not "
                              "have (a LoRA for another model?)")
        found[name] = (name, module)
    return found


def _merged_into(module: nn.Module, fmt: str) -> bool:
    """Whether a pair of this format changes this layer (else it is skipped, as the format's own loader does)."""
    return type(module) in RELEASE_KINDS if fmt == "videolora" else isinstance(module, ANY_KINDS)


class Merged:
    """The LoRAs merged into a model, and the weights they replaced, so that removing them restores every bit."""

    def __init__(self, models: Models, cfg: ModelConfig):
        self.models, self.cfg = models, cfg
        self.loras: list[tuple[LoRA, float]] = []
        self._original: dict[int, tuple[nn.Module, torch.Tensor]] = {}
        self._permanent = False  # a LoRA was merged without keeping what it replaced

    @torch.no_grad()
    def add(self, lora: LoRA, scale: float = 1.0, keep: bool = True) -> None:
        """Merge `lora` at `scale`; every pair is checked before any weight changes. `keep=False` does not keep the
        weights it replaces (memory a run that never removes it need not spend), and `clear` then refuses."""
        updates = []
        modules = _modules(self.models, self.cfg, lora)
        for path, (up, down, factor) in lora.pairs.items():
            label, module = modules[path]
            if not _merged_into(module, lora.format):
                continue
            device = module.weight.device
            up2, down2 = up.flatten(1).float().to(device), down.flatten(1).float().to(device)
            shape = tuple(module.weight.shape)
            if (up2.shape[0], down2.shape[1]) != (shape[0], module.weight[0].numel()) or up2.shape[1] != down2.shape[0]:
                raise VcraftError(f"{lora.source} does not fit this model: '{label}' is {up2.shape[0]}x"
                                  f"{down2.shape[1]} (rank {down2.shape[0]}) in the file, the model's layer is "
                                  f"{list(shape)}")
            updates.append((module, up2, down2, scale * factor))
        for module, up2, down2, weight_scale in updates:
            if keep:
                self._original.setdefault(id(module), (module, module.weight.detach().clone()))
            else:
                self._permanent = True
            delta = (up2 @ down2).mul_(weight_scale).view(module.weight.shape)
            if module.weight.dtype == torch.float32:
                module.weight.add_(delta)
            else:  # merged in float32, cast once
                module.weight.copy_((module.weight.float() + delta).to(module.weight.dtype))
        self.loras.append((lora, scale))

    def kept_bytes(self) -> int:
        """The memory the replaced weights take while LoRAs are merged."""
        return sum(w.numel() * w.element_size() for _, w in self._original.values())

    @torch.no_grad()
    def clear(self) -> None:
        """Remove every merged LoRA: the weights as they were, bit for bit."""
        if self._permanent:
            raise VcraftError("a LoRA merged with keep=False cannot be removed; load the model again")
        for module, weight in self._original.values():
            module.weight.copy_(weight)
        self._original.clear()
        self.loras.clear()

