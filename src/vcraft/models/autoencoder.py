"""The KL autoencoder, applied frame by frame to videos, with its latent scale."""

from __future__ import annotations

import re
from typing import Iterator

import torch
from torch import nn

from vcraft.config import AutoencoderConfig
from vcraft.errors import VcraftError
from vcraft.models.vae_decoder import Decoder


def diffusers_vae_config(cfg: AutoencoderConfig) -> dict:
    """diffusers' description of the LDM KL autoencoder with these sizes."""
    levels = len(cfg.ch_mult)
    return {
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_ch,
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": [cfg.ch * m for m in cfg.ch_mult],
        "layers_per_block": cfg.num_res_blocks,
        "latent_channels": cfg.embed_dim,
        "norm_num_groups": cfg.norm_groups,
    }


def trainable_decoder(cfg: AutoencoderConfig, decoder: nn.Module) -> nn.Module:
    """diffusers' Decoder holding `decoder`'s weights: the same layers under the same names, and one that autograd can
    go through (vcraft's overwrites its activations in place)."""
    from diffusers.models.autoencoders.vae import Decoder as DiffusersDecoder

    settings = diffusers_vae_config(cfg)
    trainable = DiffusersDecoder(in_channels=cfg.embed_dim, out_channels=cfg.out_ch,
                                 **{k: settings[k] for k in ("up_block_types", "block_out_channels",
                                                             "layers_per_block", "norm_num_groups")})
    trainable.load_state_dict(decoder.state_dict())
    return trainable.to(next(decoder.parameters()).device)


# LDM's names of the autoencoder's parts -> diffusers' (the decoder's up-blocks are renumbered in `_renamed`).
_LDM_TO_DIFFUSERS = [
    (r"^(encoder|decoder)\.norm_out\.", r"\1.conv_norm_out."),
    (r"^encoder\.down\.(\d+)\.block\.(\d+)\.", r"encoder.down_blocks.\1.resnets.\2."),
    (r"^encoder\.down\.(\d+)\.downsample\.", r"encoder.down_blocks.\1.downsamplers.0."),
    (r"^(encoder|decoder)\.mid\.block_1\.", r"\1.mid_block.resnets.0."),
    (r"^(encoder|decoder)\.mid\.block_2\.", r"\1.mid_block.resnets.1."),
    (r"^(encoder|decoder)\.mid\.attn_1\.norm\.", r"\1.mid_block.attentions.0.group_norm."),
    (r"^(encoder|decoder)\.mid\.attn_1\.([qkv])\.", r"\1.mid_block.attentions.0.to_\2."),
    (r"^(encoder|decoder)\.mid\.attn_1\.proj_out\.", r"\1.mid_block.attentions.0.to_out.0."),
    (r"\.nin_shortcut\.", ".conv_shortcut."),
]


def convert_ldm_vae_keys(state_dict: dict[str, torch.Tensor], cfg: AutoencoderConfig) -> dict[str, torch.Tensor]:
    """An LDM-layout autoencoder state dict (no prefix) in diffusers' layout, as diffusers' own converter makes it
    (tests/test_reference.py holds the two equal). Written here because importing that converter costs seconds of
    every command that loads an official checkpoint. Names it does not know are kept, for the strict check."""
    levels = len(cfg.ch_mult)
    converted = {}
    for key, value in state_dict.items():
        new = _renamed(key, levels)
        if ".mid_block.attentions.0." in new and value.dim() > 2:
            value = value.flatten(1)  # the attention's 1x1 convolutions are linear layers in diffusers
        converted[new] = value
    return converted


def _renamed(key: str, levels: int) -> str:
    up = re.match(r"^decoder\.up\.(\d+)\.(block|upsample)\.", key)
    if up is not None:  # LDM numbers the decoder's levels from the finest, diffusers from the coarsest
        part = "resnets" if up.group(2) == "block" else "upsamplers.0"
        key = f"decoder.up_blocks.{levels - 1 - int(up.group(1))}.{part}.{key[up.end():]}"
    for pattern, replacement in _LDM_TO_DIFFUSERS:
        key = re.sub(pattern, replacement, key)
    return key


# Output pixels decoded per call: 4 frames of 256x256, 1 of 320x512, 64 of 64x64.
DECODE_PIXELS = 2 ** 18


class VideoAutoencoder(nn.Module):
    """Encodes `[b, 3, t, H, W]` videos in [-1, 1] to scaled latents `[b, c, t, H/8, W/8]` and back.

    The state dict has diffusers' AutoencoderKL layout. The encoder is diffusers' and is built only when
    asked for (text-to-video never encodes; see vae_decoder for what that saves); the decoder is vcraft's."""

    def __init__(self, cfg: AutoencoderConfig, scale_factor: float, encoder: bool = True):
        super().__init__()
        latent = cfg.embed_dim
        self.encoder = self.quant_conv = None
        if encoder:
            from diffusers.models.autoencoders.vae import Encoder

            settings = diffusers_vae_config(cfg)
            self.encoder = Encoder(in_channels=cfg.in_channels, out_channels=latent, double_z=True,
                                   **{k: settings[k] for k in ("down_block_types", "block_out_channels",
                                                               "layers_per_block", "norm_num_groups")})
            self.quant_conv = nn.Conv2d(2 * latent, 2 * latent, 1)
        self.post_quant_conv = nn.Conv2d(latent, latent, 1)
        self.decoder = Decoder(cfg)
        self.scale_factor = scale_factor
        self.downsample = 2 ** (len(cfg.ch_mult) - 1)

    def encode_moments(self, video: torch.Tensor) -> torch.Tensor:
        """Per frame, the posterior's mean and log-variance stacked on channels (before clamping)."""
        if self.encoder is None:
            raise VcraftError("this autoencoder was built without its encoder (load it with encoder=True)")
        b, _, t = video.shape[:3]
        frames = video.transpose(1, 2).flatten(0, 1)
        moments = self.quant_conv(self.encoder(frames))
        return moments.unflatten(0, (b, t)).transpose(1, 2)

    def encode(self, video: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Posterior mean times the scale factor; with `noise`, a posterior sample drawn with it."""
        mean, logvar = self.encode_moments(video).chunk(2, dim=1)
        if noise is not None:
            mean = mean + torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) * noise
        return self.scale_factor * mean

    def decode_chunks(self, latents: torch.Tensor, chunk: int | None = None) -> Iterator[torch.Tensor]:
        """Decode `chunk` frames at a time (there is no temporal mixing in the VAE), so memory does not
        grow with the video's length. By default as many frames as make DECODE_PIXELS output pixels (at least
        one): the decoder's full-resolution activations set its peak memory.
        Yields `[b, 3, chunk, H, W]`, not clamped."""
        b, _, t = latents.shape[:3]
        if chunk is None:
            chunk = max(1, DECODE_PIXELS // (b * latents.shape[3] * latents.shape[4] * self.downsample ** 2))
        z = latents * (1.0 / self.scale_factor)  # the reference multiplies by the reciprocal
        for start in range(0, t, chunk):
            part = z[:, :, start:start + chunk]
            n = part.shape[2]
            frames = part.transpose(1, 2).flatten(0, 1).contiguous(memory_format=torch.channels_last)
            frames = self.decoder(self.post_quant_conv(frames))
            yield frames.unflatten(0, (b, n)).transpose(1, 2)

    def decode(self, latents: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        return torch.cat(list(self.decode_chunks(latents, chunk)), dim=2)
