"""Build the model stack from a config and place a checkpoint's tensors into it.

Modules are built on the meta device (no memory, no random init) and the checkpoint's tensors are
assigned in place, so a model costs one copy of its weights, in the target dtype.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import torch

from vcraft.config import ModelConfig, load_preset, preset_names
from vcraft.errors import VcraftError
from vcraft.loaders.checkpoints import assign, check_fits, check_schedule
from vcraft.loaders.components import BY_NAME, BuildOptions, Models, Tensors, build, split, without
from vcraft.loaders.weights import PART_COMPONENTS
from vcraft.sampling.schedule import make_schedule, scale_array


def build_models(cfg: ModelConfig, device: str | torch.device = "meta", encoder: bool = False) -> Models:
    """Instantiate the components (loaders/components.py); on the meta device (the default) this allocates nothing.
    The autoencoder's encoder only with `encoder` (generating from text or an image never encodes a video)."""
    with torch.device(device):
        modules = build(cfg, BuildOptions(encoder=encoder))
    return Models(modules, make_schedule(cfg.schedule))


def fit_checkpoint(models: Models, cfg: ModelConfig, state: Tensors, source: str, separate: Iterable[str] = ()
                   ) -> list[tuple[torch.nn.Module, Tensors]]:
    """Check that an official-layout state dict fits the built components exactly (see checkpoints.check_fits),
    before anything is placed; returns each module with its tensors, keyed as the module names them. The
    components named in `separate` come from files of their own: the checkpoint need not hold them."""
    parts, schedule = split(state, source)
    for name in parts:
        if getattr(models, name) is None:
            raise VcraftError(f"{source} holds weights of the {BY_NAME[name].label} ('{BY_NAME[name].prefix}...'), "
                              "a part this config lacks; give the config of the model it belongs to")
    fitted = [(module, _fitted(name, module, parts.get(name, {}), cfg, source)) for name, module in models.items()
              if name in parts or name not in separate]
    scale_full = torch.tensor(scale_array(cfg.schedule), dtype=torch.float32)
    check_schedule(schedule, models.schedule.alphas_cumprod, scale_full, source)
    return fitted


def _fitted(name: str, module: torch.nn.Module, tensors: Tensors, cfg: ModelConfig, source: str) -> Tensors:
    component = BY_NAME[name]
    try:
        renamed = component.rename(tensors, cfg, module)
    except VcraftError as exc:
        raise VcraftError(f"{source} does not fit the {component.label} of this config: {exc}") from None
    check_fits(module, renamed, component.label, source)
    return renamed


def attach(models: Models, cfg: ModelConfig, name: str, state: Tensors, source: str) -> None:
    """Place a separate weight file into the built component `name`: its keys with or without the component's
    official prefix, renamed and checked strictly as a checkpoint's part is; its weights replace the module's (in
    the module's dtype, on its device)."""
    module, tensors = _part(models, cfg, name, state, source)
    module.load_state_dict(tensors, strict=True)


def _part(models: Models, cfg: ModelConfig, name: str, state: Tensors, source: str
          ) -> tuple[torch.nn.Module, Tensors]:
    """The component `name` and a separate file's tensors fitted to it (keys with or without its prefix)."""
    module = getattr(models, name)
    if module is None:
        raise VcraftError(f"{source} is for the {BY_NAME[name].label}, which this model lacks")
    prefix = BY_NAME[name].prefix
    return module, _fitted(name, module, {k.removeprefix(prefix): v for k, v in state.items()}, cfg, source)


def place_checkpoint(models: Models, cfg: ModelConfig, state: dict[str, torch.Tensor], source: str,
                     dtype: torch.dtype | None = None) -> None:
    """Strictly assign an official-layout state dict to the modules, converting to `dtype`."""
    for module, tensors in fit_checkpoint(models, cfg, state, source):
        assign(module, tensors, dtype)


def load_models(cfg: ModelConfig, state: dict[str, torch.Tensor], source: str,
                device: torch.device = torch.device("cpu"), dtype: torch.dtype = torch.float32,
                encoder: bool = False, parts: Mapping[str, tuple[Tensors, str]] = {}) -> Models:
    """A ready-to-run model stack on `device` in `dtype`, in inference mode (the autoencoder's encoder only
    with `encoder`); `parts`: components' own files (tensors and where they came from) by component name, which
    replace what the checkpoint holds for them. Consumes `state` (it is left empty), so each tensor read in another
    dtype is freed as soon as it is converted."""
    models = build_models(cfg, encoder=encoder)
    fitted = fit_checkpoint(models, cfg, without(state, parts), source, parts)  # the checkpoint's copies unused
    fitted += [_part(models, cfg, name, tensors, part_source) for name, (tensors, part_source) in parts.items()]
    state.clear()
    for module, tensors in fitted:
        assign(module, tensors, dtype)
    return ready_for_inference(models, device)


def ready_for_inference(models: Models, device: torch.device) -> Models:
    """Move the modules to `device`, in eval mode, without gradients."""
    for module in models.modules():
        module.to(device).eval().requires_grad_(False)
    if device.type in ("cpu", "cuda"):
        # The decoder's full-resolution convolutions then run channels-last without layout conversions: less
        # working memory and time on a CPU (docs/benchmarks.md).
        models.autoencoder.to(memory_format=torch.channels_last)
    return models


def identify_preset(state: dict[str, torch.Tensor]) -> str | None:
    """The preset whose architecture this state dict fits exactly, if any. Each preset's UNet is tried first, alone:
    most presets fail there, before their other components (transformers' CLIP, say) are built at all."""
    try:
        unet_tensors = split(state, "")[0].get("unet", {})
    except VcraftError:
        return None
    for name in preset_names():
        cfg = load_preset(name).model
        try:
            with torch.device("meta"):
                unet = BY_NAME["unet"].build(cfg, BuildOptions())
            _fitted("unet", unet, dict(unet_tensors), cfg, name)
            fit_checkpoint(build_models(cfg), cfg, state, name, separate=PART_COMPONENTS)
        except VcraftError:
            continue
        return name
    return None
