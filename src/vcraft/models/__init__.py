"""The networks: UNet, autoencoder, text encoders by family, image encoder. Each module names its parameters as the
official checkpoints do, so their state dicts load unchanged."""

from __future__ import annotations

from torch import nn


def text_encoder_class(family: str) -> type[nn.Module]:
    """The text encoder of a family (config.TEXT_FAMILIES). Each takes its TextEncoderConfig, owns its tokenizer and
    offers `encode(prompts) -> [n, tokens, width]`, which is all the pipeline and training call."""
    if family == "open_clip":
        from vcraft.models.text_encoder import OpenCLIPTextEncoder

        return OpenCLIPTextEncoder
    if family == "clip":
        from vcraft.models.clip_text import CLIPTextEncoder

        return CLIPTextEncoder
    raise ValueError(f"unknown text encoder family {family!r}")


def unet_class(family: str) -> type[nn.Module]:
    """The UNet of a family (config.UNET_FAMILIES), built from its UNetConfig."""
    if family == "videocrafter":
        from vcraft.models.unet3d import UNet3D

        return UNet3D
    if family == "lvdm":
        from vcraft.models.unet_lvdm import UNetLVDM

        return UNetLVDM
    raise ValueError(f"unknown UNet family {family!r}")
