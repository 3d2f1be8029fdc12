"""Build the model stack from a config and place a checkpoint's tensors into it.

Modules are built on the meta device (no memory, no random init) and the checkpoint's tensors are
assigned in place, so a model costs one copy of its weights, in the target dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from vcraft.config import ModelConfig, load_preset, preset_names
from vcraft.errors import VcraftError
from vcraft.loaders.checkpoints import (
    assign,
    check_fits,
    check_schedule,
    split_state_dict,
)
from vcraft.models.autoencoder import VideoAutoencoder, convert_ldm_vae_keys
from vcraft.models.image_encoder import ImageEncoder
from vcraft.models.text_encoder import TextEncoder
from vcraft.models.unet3d import UNet3D
from vcraft.sampling.schedule import Schedule, make_schedule, scale_array


@dataclass
class Models:
    text_encoder: TextEncoder
    unet: UNet3D
    autoencoder: VideoAutoencoder
    schedule: Schedule
    image_encoder: Optional[ImageEncoder] = None  # image-to-video models

    def modules(self) -> list[torch.nn.Module]:
        return [m for m in (self.text_encoder, self.unet, self.autoencoder, self.image_encoder) if m is not None]


def build_models(cfg: ModelConfig, device: str | torch.device = "meta", encoder: bool = False) -> Models:
    """Instantiate the modules; on the meta device (the default) this allocates nothing. The autoencoder's
    encoder only with `encoder` (generating from text or an image never encodes a video)."""
    with torch.device(device):
        modules = (TextEncoder(cfg.text_encoder), UNet3D(cfg.unet),
                   VideoAutoencoder(cfg.autoencoder, cfg.scale_factor, encoder))
        image = None if cfg.image_encoder is None else ImageEncoder(cfg.image_encoder, cfg.unet.context_dim)
    return Models(*modules, make_schedule(cfg.schedule), image)


def fit_checkpoint(models: Models, cfg: ModelConfig, state: dict[str, torch.Tensor], source: str
                   ) -> list[tuple[torch.nn.Module, dict[str, torch.Tensor]]]:
    """Check that an official-layout state dict fits the modules exactly (see checkpoints.check_fits),
    before anything is placed; returns each module with its tensors, keyed as the module names them."""
    parts = split_state_dict(state, source)
    # vcraft's own models were trained as diffusers modules and keep that layout; official ones use LDM's.
    native = any(k.startswith("encoder.down_blocks.") for k in parts.vae)
    vae = parts.vae if native else convert_ldm_vae_keys(parts.vae, cfg.autoencoder)
    if len(vae) != len(parts.vae):
        raise VcraftError(f"{source} does not fit the autoencoder of this config: "
                          f"{len(parts.vae) - len(vae)} keys could not be mapped")
    if models.autoencoder.encoder is None:
        vae = {k: v for k, v in vae.items() if not k.startswith(("encoder.", "quant_conv."))}
    fitted = [(models.unet, parts.unet, "UNet"), (models.text_encoder, parts.text, "text encoder"),
              (models.autoencoder, vae, "autoencoder")]
    if models.image_encoder is not None:
        fitted.append((models.image_encoder, parts.image, "image encoder"))
    elif parts.image:
        raise VcraftError(f"{source} holds an image encoder (an image-to-video model), which this config lacks")
    for module, tensors, what in fitted:
        check_fits(module, tensors, what, source)
    scale_full = torch.tensor(scale_array(cfg.schedule), dtype=torch.float32)
    check_schedule(parts.schedule, models.schedule.alphas_cumprod, scale_full, source)
    return [(module, tensors) for module, tensors, _ in fitted]


def place_checkpoint(models: Models, cfg: ModelConfig, state: dict[str, torch.Tensor], source: str,
                     dtype: torch.dtype | None = None) -> None:
    """Strictly assign an official-layout state dict to the modules, converting to `dtype`."""
    for module, tensors in fit_checkpoint(models, cfg, state, source):
        assign(module, tensors, dtype)


def load_models(cfg: ModelConfig, state: dict[str, torch.Tensor], source: str,
                device: torch.device = torch.device("cpu"), dtype: torch.dtype = torch.float32,
                encoder: bool = False) -> Models:
    """A ready-to-run model stack on `device` in `dtype`, in inference mode (the autoencoder's encoder only
    with `encoder`). Consumes `state` (it is left empty), so each tensor read in another dtype is freed as
    soon as it is converted."""
    models = build_models(cfg, encoder=encoder)
    fitted = fit_checkpoint(models, cfg, state, source)
    state.clear()
    for module, tensors in fitted:
        assign(module, tensors, dtype)
    return ready_for_inference(models, device)


def ready_for_inference(models: Models, device: torch.device) -> Models:
    """Move the modules to `device`, in eval mode, without gradients."""
    for module in models.modules():
        module.to(device).eval().requires_grad_(False)
    if device.type in ("cpu", "cuda"):
        # The decoder's full-resolution convolutions then run channels-last without layout conversions: on a
        # CPU a quarter less working memory and 14% less time for 320x512 frames (scripts/bench.py).
        models.autoencoder.to(memory_format=torch.channels_last)
    return models


def identify_preset(state: dict[str, torch.Tensor]) -> str | None:
    """The preset whose architecture this state dict fits exactly, if any."""
    for name in preset_names():
        cfg = load_preset(name).model
        try:
            fit_checkpoint(build_models(cfg), cfg, state, name)
        except VcraftError:
            continue
        return name
    return None
