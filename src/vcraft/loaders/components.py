"""The table of components a model is made of: for each, where its keys are in the official checkpoint layout, how
its module is built from the config, and how the checkpoint's names become the module's.

A checkpoint is split by this table, strictly per component (loading.py); a separate weight file (an adapter, a
LoRA) finds its component through the same table (`route`). Adding a component is one entry here and its module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional

import torch
from torch import nn

from vcraft.config import ModelConfig
from vcraft.errors import VcraftError
from vcraft.sampling.schedule import Schedule

Tensors = dict[str, torch.Tensor]
# Top-level buffers of the reference's LatentDiffusion: all recomputed from the config (checked, not placed).
SCHEDULE_KEYS = {
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "scale_arr",
}


@dataclass(frozen=True)
class BuildOptions:
    """What a build asks for beyond the config."""

    encoder: bool = False  # the autoencoder's encoder (continuing a video, training); generation never encodes


@dataclass(frozen=True)
class Component:
    name: str  # its attribute of Models
    label: str  # for messages
    prefix: str  # of its keys in the official checkpoint layout; the module names the rest
    build: Callable[[ModelConfig, BuildOptions], Optional[nn.Module]]  # None where the config has no such part
    # The checkpoint's names (prefix removed) -> the module's, given the built module; a VcraftError says why not.
    rename: Callable[[Tensors, ModelConfig, nn.Module], Tensors] = lambda tensors, cfg, module: tensors


def _unet(cfg: ModelConfig, options: BuildOptions) -> nn.Module:
    from vcraft.models import unet_class

    return unet_class(cfg.unet.family)(cfg.unet)


def _unet_keys(tensors: Tensors, cfg: ModelConfig, module: nn.Module) -> Tensors:
    # T2V-Turbo v1 trains only a LoRA over its guidance projection, whose base weight (a random draw at start-up in
    # the original) no file holds: a VideoCrafter2 checkpoint without it gets zeros (docs/models.md, T2V-Turbo).
    u = cfg.unet
    if u.guidance_embedding and not u.motion_embedding and tensors and "time_cond_proj.weight" not in tensors:
        like = next(iter(tensors.values()))
        tensors = {**tensors, "time_cond_proj.weight": like.new_zeros(u.model_channels, u.guidance_embedding)}
    return tensors


def _autoencoder(cfg: ModelConfig, options: BuildOptions) -> nn.Module:
    from vcraft.models.autoencoder import VideoAutoencoder

    return VideoAutoencoder(cfg.autoencoder, cfg.scale_factor, options.encoder)


def _autoencoder_keys(tensors: Tensors, cfg: ModelConfig, module: nn.Module) -> Tensors:
    from vcraft.models.autoencoder import convert_ldm_vae_keys

    # vcraft's own models were trained as diffusers modules and keep that layout; official ones use LDM's.
    if not any(k.startswith("encoder.down_blocks.") for k in tensors):
        renamed = convert_ldm_vae_keys(tensors, cfg.autoencoder)
        if len(renamed) != len(tensors):  # two names made one: a tensor would be dropped unseen
            raise VcraftError(f"{len(tensors) - len(renamed)} keys could not be mapped")
        tensors = renamed
    if module.encoder is None:  # built without it: its weights are skipped, not demanded
        tensors = {k: v for k, v in tensors.items() if not k.startswith(("encoder.", "quant_conv."))}
    return tensors


def _text_encoder(cfg: ModelConfig, options: BuildOptions) -> nn.Module:
    from vcraft.models import text_encoder_class

    return text_encoder_class(cfg.text_encoder.family)(cfg.text_encoder)


def _library_keys(tensors: Tensors, cfg: ModelConfig, module: nn.Module) -> Tensors:
    # A module built from a library (transformers) whose names differ from the official ones says how they map.
    return module.official_keys(tensors) if hasattr(module, "official_keys") else tensors


def _image_encoder(cfg: ModelConfig, options: BuildOptions) -> Optional[nn.Module]:
    from vcraft.models.image_encoder import ImageEncoder

    return None if cfg.image_encoder is None else ImageEncoder(cfg.image_encoder)


def _image_projector(cfg: ModelConfig, options: BuildOptions) -> Optional[nn.Module]:
    from vcraft.models.image_encoder import Resampler

    return None if cfg.image_encoder is None else Resampler(cfg.image_encoder, cfg.unet.context_dim)


def _adapter(cfg: ModelConfig, options: BuildOptions) -> Optional[nn.Module]:
    from vcraft.models.adapter import ControlAdapter

    if cfg.adapter is None:
        return None
    widths = [cfg.unet.model_channels * k for k in cfg.unet.channel_mult]
    return ControlAdapter(cfg.adapter, widths, 2 ** (len(cfg.autoencoder.ch_mult) - 1))


def _depth_estimator(cfg: ModelConfig, options: BuildOptions) -> Optional[nn.Module]:
    from vcraft.models.depth import DepthEstimator

    return None if cfg.depth is None else DepthEstimator(cfg.depth)


COMPONENTS = (
    Component("unet", "UNet", "model.diffusion_model.", _unet, _unet_keys),
    Component("autoencoder", "autoencoder", "first_stage_model.", _autoencoder, _autoencoder_keys),
    Component("text_encoder", "text encoder", "cond_stage_model.", _text_encoder, _library_keys),
    Component("image_encoder", "image encoder", "embedder.", _image_encoder),  # image-to-video: CLIP's vision tower
    Component("image_projector", "image projector", "image_proj_model.", _image_projector),  # ... and its Resampler
    Component("adapter", "control adapter", "adapter.", _adapter),  # VideoControl; a file of its own officially
    Component("depth_estimator", "depth estimator", "depth_stage_model.model.", _depth_estimator, _library_keys),
)
BY_NAME = {c.name: c for c in COMPONENTS}


def without(state: Tensors, names: Iterable[str]) -> Tensors:
    """`state` without the keys of the components `names` (those whose own files replace them)."""
    prefixes = tuple(BY_NAME[name].prefix for name in names)
    return {k: v for k, v in state.items() if not k.startswith(prefixes)}


class Models:
    """A model's built components, each by its name in COMPONENTS (None for one its config lacks: `models.unet`,
    `models.image_encoder`), and its noise schedule."""

    def __init__(self, modules: dict[str, nn.Module], schedule: Schedule):
        self.__dict__.update(dict.fromkeys(BY_NAME), **modules)
        self.schedule = schedule

    def items(self) -> Iterator[tuple[str, nn.Module]]:
        """(name, module) of every built component, in the table's order."""
        return ((c.name, getattr(self, c.name)) for c in COMPONENTS if getattr(self, c.name) is not None)

    def modules(self) -> list[nn.Module]:
        return [module for _, module in self.items()]


def build(cfg: ModelConfig, options: BuildOptions = BuildOptions()) -> dict[str, nn.Module]:
    """Every component the config has, built (on the current default device)."""
    built = {c.name: c.build(cfg, options) for c in COMPONENTS}
    return {name: module for name, module in built.items() if module is not None}


def route(key: str) -> Optional[tuple[Component, str]]:
    """The component an official-layout key belongs to, and the key without its prefix; None for no component."""
    for component in COMPONENTS:
        if key.startswith(component.prefix):
            return component, key[len(component.prefix):]
    return None


def split(state: Tensors, source: str) -> tuple[dict[str, Tensors], Tensors]:
    """A checkpoint's tensors by component (keys without prefix), and its schedule buffers; any other key is an
    error."""
    parts: dict[str, Tensors] = {}
    schedule = {}
    for key, value in state.items():
        found = route(key)
        if found is not None:
            parts.setdefault(found[0].name, {})[found[1]] = value
        elif key in SCHEDULE_KEYS:
            schedule[key] = value
        else:
            raise VcraftError(f"{source} is not a VideoCrafter checkpoint: unexpected keys such as '{key}'")
    return parts, schedule


def official_layout(parts: dict[str, Tensors]) -> Tensors:
    """Tensors by component (keys as the modules name them) as one state dict in the official layout."""
    return {BY_NAME[name].prefix + key: value for name, tensors in parts.items() for key, value in tensors.items()}
