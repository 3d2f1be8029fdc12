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
    raise ValueError(f"unknown text encoder family {family!r}")
