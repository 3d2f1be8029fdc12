"""MiDaS DPT-hybrid, the depth estimator of VideoCrafter's VideoControl (April 2023): each control frame -> relative
inverse depth, normalised per frame to [-1, 1] for the depth adapter.

The network is transformers' `DPTForDepthEstimation` with hybrid embeddings (a BiT ResNet under a ViT), configured as
MiDaS builds it from timm; the original file's keys (`pretrained.model.*`, `pretrained.act_postprocess3/4.*`,
`scratch.*`) are renamed to transformers' names by `official_keys`.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from vcraft.config import DepthConfig
from vcraft.errors import VcraftError

if TYPE_CHECKING:
    import transformers

MIDAS_SIZE = 384  # MiDaS DPT-hybrid's only input size: the position embeddings are a 24x24 grid of 16-pixel cells

# timm's ImageNet classifier on the ViT: MiDaS reads the blocks' features through hooks and never computes logits.
UNUSED_KEYS = ("pretrained.model.head.weight", "pretrained.model.head.bias")

QKV = ("query", "key", "value")  # timm's fused qkv rows, in order, as transformers' three Linear layers

_BIT = "model.dpt.embeddings.backbone.bit."
_VIT = "model.dpt.encoder.layer."
_NECK = "model.neck."
# (original key prefix, ours): MiDaS' modules and transformers' counterparts; refinenetN runs (4 - N)-th in the fusion.
_RENAMES = [
    (r"pretrained\.model\.patch_embed\.backbone\.stem\.conv\.", lambda m: _BIT + "embedder.convolution."),
    (r"pretrained\.model\.patch_embed\.backbone\.stem\.norm\.", lambda m: _BIT + "embedder.norm."),
    (r"pretrained\.model\.patch_embed\.backbone\.stages\.(\d+)\.blocks\.(\d+)\.",
     lambda m: f"{_BIT}encoder.stages.{m[1]}.layers.{m[2]}."),
    (r"pretrained\.model\.patch_embed\.proj\.", lambda m: "model.dpt.embeddings.projection."),
    (r"pretrained\.model\.cls_token", lambda m: "model.dpt.embeddings.cls_token"),
    (r"pretrained\.model\.pos_embed", lambda m: "model.dpt.embeddings.position_embeddings"),
    (r"pretrained\.model\.blocks\.(\d+)\.norm1\.", lambda m: f"{_VIT}{m[1]}.layernorm_before."),
    (r"pretrained\.model\.blocks\.(\d+)\.norm2\.", lambda m: f"{_VIT}{m[1]}.layernorm_after."),
    (r"pretrained\.model\.blocks\.(\d+)\.attn\.qkv\.", lambda m: f"{_VIT}{m[1]}.attention.attention.qkv."),
    (r"pretrained\.model\.blocks\.(\d+)\.attn\.proj\.", lambda m: f"{_VIT}{m[1]}.attention.output.dense."),
    (r"pretrained\.model\.blocks\.(\d+)\.mlp\.fc1\.", lambda m: f"{_VIT}{m[1]}.intermediate.dense."),
    (r"pretrained\.model\.blocks\.(\d+)\.mlp\.fc2\.", lambda m: f"{_VIT}{m[1]}.output.dense."),
    # timm's final ViT norm: computed and then unused by both (the features come from blocks 8 and 11).
    (r"pretrained\.model\.norm\.", lambda m: "model.dpt.layernorm."),
    (r"pretrained\.act_postprocess([34])\.0\.project\.0\.",
     lambda m: f"{_NECK}reassemble_stage.readout_projects.{int(m[1]) - 1}.0."),
    (r"pretrained\.act_postprocess([34])\.3\.",
     lambda m: f"{_NECK}reassemble_stage.layers.{int(m[1]) - 1}.projection."),
    (r"pretrained\.act_postprocess4\.4\.", lambda m: f"{_NECK}reassemble_stage.layers.3.resize."),
    (r"scratch\.layer([1-4])_rn\.", lambda m: f"{_NECK}convs.{int(m[1]) - 1}."),
    (r"scratch\.refinenet([1-4])\.resConfUnit([12])\.conv([12])\.",
     lambda m: f"{_NECK}fusion_stage.layers.{4 - int(m[1])}.residual_layer{m[2]}.convolution{m[3]}."),
    (r"scratch\.refinenet([1-4])\.out_conv\.", lambda m: f"{_NECK}fusion_stage.layers.{4 - int(m[1])}.projection."),
    (r"scratch\.output_conv\.", lambda m: "model.head.head."),
]
_PATTERNS = [(re.compile(pattern), rename) for pattern, rename in _RENAMES]


def midas_config(cfg: DepthConfig) -> transformers.DPTConfig:
    """DPT-hybrid as MiDaS builds `dpt_hybrid` (timm's vit_base_r50_s16_384), with the sizes of `cfg`; everything else
    is the original's."""
    from transformers import BitConfig, DPTConfig

    stages = len(cfg.resnet_layers)
    # timm's ResNetV2 without pre-activation: "same" padding, StdConv eps 1e-8, GroupNorm(32) + ReLU, ratio 0.25.
    backbone = BitConfig(
        layer_type="bottleneck", global_padding="same", embedding_dynamic_padding=True, num_groups=32,
        hidden_act="relu", embedding_size=cfg.stem_chs, hidden_sizes=list(cfg.resnet_channels),
        depths=list(cfg.resnet_layers), out_features=[f"stage{i + 1}" for i in range(stages)])
    grid = MIDAS_SIZE // 16  # the stem and stages 1-2 halve the image four times
    width = cfg.vit_embed_dim
    return DPTConfig(
        is_hybrid=True, backbone_config=backbone, backbone_featmap_shape=[1, cfg.resnet_channels[-1], grid, grid],
        image_size=MIDAS_SIZE, patch_size=16, hidden_size=width, num_hidden_layers=cfg.vit_depth,
        num_attention_heads=cfg.vit_heads, intermediate_size=4 * width, hidden_act="gelu", layer_norm_eps=1e-6,
        qkv_bias=True,
        # MiDaS' hooks: ResNet stages 0 and 1, ViT blocks 8 and 11 (transformers reads the ViT ones from [2:]).
        backbone_out_indices=[0, 1, 8, 11], readout_type="project", neck_ignore_stages=[0, 1],
        reassemble_factors=[1, 1, 1, 0.5], neck_hidden_sizes=list(cfg.reassemble),
        fusion_hidden_size=cfg.features, use_batch_norm_in_fusion_residual=False, use_bias_in_fusion_residual=True,
        add_projection=False, head_in_index=-1, use_auxiliary_head=False)


class DepthEstimator(nn.Module):
    """Frames `[b, 3, H, W]` in [-1, 1] -> MiDaS' non-negative relative inverse depth `[b, 1, 384, 384]`."""

    def __init__(self, cfg: DepthConfig):
        super().__init__()
        from transformers import DPTForDepthEstimation

        self.model = DPTForDepthEstimation(midas_config(cfg))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # No mean/std step: [-1, 1] is what MiDaS' own NormalizeImage(0.5, 0.5) makes of [0, 1] pixels.
        x = F.interpolate(x, size=(MIDAS_SIZE, MIDAS_SIZE), mode="bicubic", align_corners=False)
        depth = self.model(pixel_values=x, output_hidden_states=True).predicted_depth
        # The original then resizes 384x384 to 384x384 bicubically, which is the identity.
        return depth.unsqueeze(1)

    def official_keys(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The original MiDaS file's keys (or those of transformers' DPTForDepthEstimation, as `Intel/dpt-hybrid-midas`
        publishes the same weights) as this module names them: the ViT's fused qkv split into query/key/value,
        UNUSED_KEYS left out; any other key raises a VcraftError naming it."""
        ours = set(self.state_dict())
        renamed = {}
        for key, value in tensors.items():
            if key in UNUSED_KEYS:
                continue
            name = f"model.{key}" if f"model.{key}" in ours else _rename(key)  # transformers' own file, or MiDaS''
            parts = [(name, value)]
            if name is not None and name.endswith((".qkv.weight", ".qkv.bias")):
                base, kind = name.rsplit(".qkv.", 1)
                parts = [(f"{base}.{part}.{kind}", chunk) for part, chunk in zip(QKV, value.chunk(3))]
            for name, tensor in parts:
                if name not in ours:
                    raise VcraftError(f"the depth model's file has a key that MiDaS DPT-hybrid does not have: {key!r}")
                renamed[name] = tensor
        return renamed


def _rename(key: str) -> str | None:
    for pattern, rename in _PATTERNS:
        match = pattern.match(key)
        if match:
            return rename(match) + key[match.end():]
    return None


@torch.no_grad()
def depth_maps(estimator: DepthEstimator, frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Frames `[b, 3, t, H, W]` in [-1, 1] -> MiDaS' depth `[b, 1, t, h, w]` resized (bicubic) to `size` = (h, w), one
    frame at a time as the original's `get_batch_depth` (which then normalises each frame: pipeline/control.py)."""
    b, _, t = frames.shape[:3]
    # One memory layout whatever the caller's: the layers' rounding depends on it (about 1e-5 after normalising).
    merged = frames.transpose(1, 2).flatten(0, 1).contiguous()
    maps = [F.interpolate(estimator(frame), size=size, mode="bicubic", align_corners=False)
            for frame in merged.split(1)]
    return torch.cat(maps).unflatten(0, (b, t)).transpose(1, 2)
