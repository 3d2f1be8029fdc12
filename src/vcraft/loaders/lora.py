"""LoRA files merged into a loaded model's weights, `W += scale * up @ down`: no cost per step, and undone exactly (the
touched weights are kept as they were).

The format read here is the first release's VideoLoRA file (`.ckpt`, or its safetensors twin): `<module path from the
checkpoint's root>.lora_up.weight` / `.lora_down.weight` pairs, merged in float32 without rank or alpha scaling,
as the release's `net_load_lora` merges them. Like it, a pair for a module that is not exactly a Linear or a 2D
convolution is skipped, and so is any `.alpha` key; every path must name a module of the model.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from vcraft.errors import VcraftError
from vcraft.loaders.checkpoints import load_state_dict
from vcraft.config import ModelConfig
from vcraft.loaders.components import Models, route

UP, DOWN = ".lora_up.weight", ".lora_down.weight"
MERGED_KINDS = (nn.Linear, nn.Conv2d)  # exactly these classes, as the release merges


@dataclass(frozen=True)
class LoRA:
    """A LoRA file read once: where it came from, its sha256, and its pairs by module path (official layout)."""

    source: str
    sha256: str
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(repr=False, compare=False)


def read_lora(path: str | os.PathLike) -> LoRA:
    """A VideoLoRA file as a LoRA (read without running code); a VcraftError for anything else."""
    path = Path(path)
    try:
        state = load_state_dict(path)
    except VcraftError as exc:
        raise VcraftError(f"LoRA: {exc}") from None
    ups = {k[:-len(UP)]: v for k, v in state.items() if k.endswith(UP)}
    downs = {k[:-len(DOWN)]: v for k, v in state.items() if k.endswith(DOWN)}
    other = [k for k in state if not k.endswith((UP, DOWN)) and ".alpha" not in k]
    if not ups or other or ups.keys() != downs.keys():
        example = other[0] if other else next(iter(ups.keys() ^ downs.keys()), None)
        raise VcraftError(f"{path} is not a VideoLoRA file (pairs of .lora_up.weight and .lora_down.weight)"
                          + (f": '{example}'" if example else ""))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return LoRA(str(path.resolve()), digest, {k: (ups[k], downs[k]) for k in sorted(ups)})


def _module(models: Models, cfg: ModelConfig, path: str, source: str) -> nn.Module:
    """The module a LoRA path names: its component by the table, its name as the component renames it."""
    found = route(path + ".weight")
    module = None if found is None else getattr(models, found[0].name)
    if module is not None:
        key = next(iter(found[0].rename({found[1]: torch.empty(0)}, cfg, module)), "").removesuffix(".weight")
        try:
            return module.get_submodule(key)
        except AttributeError:
            pass
    raise VcraftError(f"{source} does not fit this model: it names '{path}', which the model does not have "
                      "(a LoRA for another model?)")


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
        for path, (up, down) in lora.pairs.items():
            module = _module(self.models, self.cfg, path, lora.source)
            if type(module) not in MERGED_KINDS:
                continue
            up2, down2 = up.flatten(1).float(), down.flatten(1).float()
            shape = tuple(module.weight.shape)
            if (up2.shape[0], down2.shape[1]) != (shape[0], module.weight[0].numel()) or up2.shape[1] != down2.shape[0]:
                raise VcraftError(f"{lora.source} does not fit this model: '{path}' is {up2.shape[0]}x"
                                  f"{down2.shape[1]} (rank {down2.shape[0]}) in the file, the model's layer is "
                                  f"{list(shape)}")
            updates.append((module, up2, down2))
        for module, up2, down2 in updates:
            if keep:
                self._original.setdefault(id(module), (module, module.weight.detach().clone()))
            else:
                self._permanent = True
            delta = (up2 @ down2).mul_(scale).view(module.weight.shape)
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

