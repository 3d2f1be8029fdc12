"""The image side of VideoCrafter1's image-to-video model, two components: a picture -> OpenCLIP vision tokens
(`ImageEncoder`) -> Resampler (the image projector) -> a few context tokens for the UNet's image cross-attention.

Module and parameter names follow the official checkpoint (`embedder.model.visual.*`, `image_proj_model.*`, each
prefix the component's), so it loads key for key. The vision tower is open_clip's ViT without its pooling: every
token after the last block, no `ln_post`, no projection. Written here, as the text tower is, so that loading never
imports open_clip.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vcraft.config import ImageEncoderConfig
from vcraft.models.text_encoder import TextTables, Transformer

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class VisionTower(nn.Module):
    def __init__(self, cfg: ImageEncoderConfig):
        super().__init__()
        patches = (cfg.image_size // cfg.patch_size) ** 2
        self.conv1 = nn.Conv2d(3, cfg.width, cfg.patch_size, cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.empty(cfg.width))
        self.positional_embedding = nn.Parameter(torch.empty(patches + 1, cfg.width))
        self.ln_pre = nn.LayerNorm(cfg.width)
        self.transformer = Transformer(cfg.width, cfg.heads, cfg.layers)
        self.ln_post = nn.LayerNorm(cfg.width)  # unused: kept so that the checkpoint loads strictly
        self.proj = nn.Parameter(torch.empty(cfg.width, cfg.embed_dim))  # unused, as ln_post

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """CLIP-normalised `[b, 3, size, size]` -> every token `[b, 1 + patches, width]`."""
        x = self.conv1(pixels).flatten(2).transpose(1, 2)
        first = self.class_embedding.expand(x.shape[0], 1, -1)
        x = self.ln_pre(torch.cat([first, x], dim=1) + self.positional_embedding)
        for block in self.transformer.resblocks:
            x = block(x, None)
        return x


class ClipImageModel(TextTables):
    """What the checkpoint holds of CLIP under `embedder.model`: the vision tower, and the text side's tables that
    the original left in place when it removed the text transformer (unused)."""

    def __init__(self, cfg: ImageEncoderConfig):
        super().__init__(cfg.vocab_size, cfg.text_width, cfg.context_length, cfg.embed_dim)
        self.visual = VisionTower(cfg)


class ImageEncoder(nn.Module):
    """A picture `[b, 3, H, W]` in [-1, 1] (at the video's size) -> every token of CLIP's vision tower
    `[b, 1 + patches, width]`; the Resampler (the image projector) turns them into context tokens."""

    def __init__(self, cfg: ImageEncoderConfig):
        super().__init__()
        self.size = cfg.image_size
        self.model = ClipImageModel(cfg)

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """`[b, 3, H, W]` in [-1, 1] -> stretched to the tower's square size (bicubic through the pixel corners,
        blurred first where it shrinks), mapped to [0, 1] without clamping, CLIP-normalised."""
        size = (self.size, self.size)
        if tuple(image.shape[-2:]) != size:
            image = F.interpolate(shrink_blur(image, size), size, mode="bicubic", align_corners=True)
        mean = torch.tensor(CLIP_MEAN, device=image.device, dtype=image.dtype)[:, None, None]
        std = torch.tensor(CLIP_STD, device=image.device, dtype=image.dtype)[:, None, None]
        return ((image + 1) / 2 - mean) / std

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.visual(self.preprocess(image))

    def blank(self, batch: int) -> torch.Tensor:
        """What guidance's unconditional pass encodes: an all-zero square input (mid-grey once preprocessed), as
        the reference builds it."""
        weight = self.model.visual.class_embedding
        return torch.zeros(batch, 3, self.size, self.size, device=weight.device, dtype=weight.dtype)


def shrink_blur(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The reference's antialiasing (kornia's resize): where an axis shrinks by f > 1, a Gaussian of sigma (f - 1)/2
    over about 4 sigma (an odd count, at least 3), reflected at the borders, on every axis; nothing when no axis
    shrinks. Written out because the reference's numbers depend on this exact kernel, which torch's own antialias
    does not use."""
    factors = (image.shape[-2] / size[0], image.shape[-1] / size[1])
    if max(factors) <= 1:
        return image
    c = image.shape[1]
    for axis, factor in ((-1, factors[1]), (-2, factors[0])):  # width first, as kornia
        sigma = max((factor - 1) / 2, 0.001)
        taps = max(int(4 * sigma), 3)
        taps += 1 - taps % 2
        offsets = torch.arange(taps, device=image.device, dtype=image.dtype) - taps // 2
        kernel = torch.exp(-offsets ** 2 / (2 * sigma ** 2))
        kernel = (kernel / kernel.sum()).expand(c, 1, taps)
        pad = taps // 2
        if axis == -1:
            image = F.conv2d(F.pad(image, (pad, pad, 0, 0), mode="reflect"), kernel[:, :, None, :], groups=c)
        else:
            image = F.conv2d(F.pad(image, (0, 0, pad, pad), mode="reflect"), kernel[:, :, :, None], groups=c)
    return image


class PerceiverAttention(nn.Module):
    """The latents attend to the image tokens followed by themselves; no biases."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)  # image tokens
        self.norm2 = nn.LayerNorm(dim)  # latents
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        x, latents = self.norm1(x), self.norm2(latents)
        k, v = self.to_kv(torch.cat([x, latents], dim=1)).chunk(2, dim=-1)
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (self.to_q(latents), k, v))
        return self.to_out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2))


class Resampler(nn.Module):
    """`tokens` learned queries that read the vision tokens through `depth` attention + MLP layers, projected
    to the UNet's context width."""

    def __init__(self, cfg: ImageEncoderConfig, context_dim: int):
        super().__init__()
        dim, mult = cfg.resampler_width, cfg.resampler_ff_mult
        self.latents = nn.Parameter(torch.empty(1, cfg.tokens, dim))
        self.proj_in = nn.Linear(cfg.width, dim)
        self.proj_out = nn.Linear(dim, context_dim)
        self.norm_out = nn.LayerNorm(context_dim)
        self.layers = nn.ModuleList(nn.ModuleList([
            PerceiverAttention(dim, cfg.resampler_heads, cfg.resampler_head_dim),
            nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * mult, bias=False), nn.GELU(),
                          nn.Linear(dim * mult, dim, bias=False)),
        ]) for _ in range(cfg.resampler_depth))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        latents = self.latents.expand(tokens.shape[0], -1, -1)
        x = self.proj_in(tokens)
        for attention, mlp in self.layers:
            latents = attention(x, latents) + latents
            latents = mlp(latents) + latents
        return self.norm_out(self.proj_out(latents))
