"""The VideoCrafter 3D UNet: a 2D latent-diffusion UNet whose levels also mix information along time.

Spatial layers see frames folded into the batch, `[(b t), c, h, w]`; temporal layers (the temporal
convolutions inside ResBlocks and the temporal transformers) unfold them. Names of modules and
parameters follow the official checkpoints, including their spelling (`temopral_conv`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from vcraft.config import UNetConfig
from vcraft.models.attention import SpatialTransformer, TemporalTransformer, sinusoidal_embedding


class GroupNorm32(nn.GroupNorm):
    """GroupNorm evaluated in float32 whatever the input dtype, as the reference does in ResBlocks."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps).to(x.dtype)


class TemporalConv(nn.Conv3d):
    """A (k, 1, 1) convolution of videos `[b, c, t, h, w]` along time, computed as the (k, 1) 2D convolution over
    `[time, pixels]` that it is: the same arithmetic, several times faster on CPUs than the 3D kernel. It takes
    nn.Conv3d's arguments, so that PEFT can build a LoRA pair of the same class around it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.kernel_size[1:] != (1, 1) or self.stride != (1, 1, 1) or self.padding[1:] != (0, 0):
            raise ValueError(f"TemporalConv convolves along time only, got kernel {self.kernel_size}, stride "
                             f"{self.stride}, padding {self.padding}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.conv2d(x.flatten(3), self.weight.squeeze(-1), self.bias, padding=(self.padding[0], 0),
                       groups=self.groups)
        return out.unflatten(3, x.shape[3:])


class TemporalConvBlock(nn.Module):
    """Four GroupNorm-SiLU-Conv3d(3x1x1) stages along time plus the input."""

    def __init__(self, channels: int, dropout: float, groups: int):
        super().__init__()

        def stage(drop: bool) -> nn.Sequential:
            # The dropout shifts the conv to index 3, as in the checkpoints. VideoCrafter trains with 0.1
            # here; inference never drops, so the config's rate (0 for vcraft's own training) is used.
            layers = [nn.GroupNorm(groups, channels), nn.SiLU()] + ([nn.Dropout(dropout)] if drop else [])
            return nn.Sequential(*layers, TemporalConv(channels, channels, (3, 1, 1), padding=(1, 0, 0)))

        self.conv1 = stage(False)
        self.conv2 = stage(True)
        self.conv3 = stage(True)
        self.conv4 = stage(True)

    def forward(self, x: torch.Tensor, batch: int) -> torch.Tensor:
        n, c, h, w = x.shape
        video = x.view(batch, n // batch, c, h, w).transpose(1, 2).contiguous()
        for stage in (self.conv1, self.conv2, self.conv3, self.conv4):
            video = stage(video)
        return x + video.transpose(1, 2).reshape(n, c, h, w)


class ResBlock(nn.Module):
    def __init__(self, channels: int, emb_channels: int, out_channels: int, temporal_conv: bool,
                 dropout: float = 0.0, groups: int = 32):
        super().__init__()
        self.in_layers = nn.Sequential(
            GroupNorm32(groups, channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            GroupNorm32(groups, out_channels), nn.SiLU(), nn.Dropout(dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        self.temopral_conv = TemporalConvBlock(out_channels, dropout, groups) if temporal_conv else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor, batch: int) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        h = self.skip_connection(x) + self.out_layers(h)
        return h if self.temopral_conv is None else self.temopral_conv(h, batch)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


@dataclass(frozen=True)
class Step:
    """One block of a latent-diffusion UNet after its first convolution: a ResBlock from `cin` to `cout` channels
    (with attention where `attention`, then a 2x upsampling where `up`), or a downsampling (`down`)."""

    cin: int
    cout: int
    attention: bool = False
    down: bool = False
    up: bool = False


@dataclass(frozen=True)
class BlockPlan:
    """The channels of every block of a latent-diffusion UNet, level by level, as VideoCrafter lays them out (the
    first release's UNet too): its input blocks, the middle block's width and its output blocks."""

    inputs: list[Step]
    middle: int
    outputs: list[Step]

    @property
    def level_ends(self) -> list[int]:
        """The index in `input_blocks` (whose first entry is the input convolution) of each level's last block
        before its downsampling: where a control adapter's feature of that level is added."""
        ends = [i + 1 for i, step in enumerate(self.inputs[:-1]) if self.inputs[i + 1].down]
        return ends + [len(self.inputs)]

    @classmethod
    def of(cls, cfg: UNetConfig) -> "BlockPlan":
        mc, levels = cfg.model_channels, len(cfg.channel_mult)
        inputs, skips, ch, ds = [], [mc], mc, 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                inputs.append(Step(ch, mult * mc, ds in cfg.attention_resolutions))
                ch = mult * mc
                skips.append(ch)
            if level != levels - 1:
                inputs.append(Step(ch, ch, down=True))
                skips.append(ch)
                ds *= 2
        middle, outputs = ch, []
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                up = bool(level) and i == cfg.num_res_blocks
                outputs.append(Step(ch + skips.pop(), mult * mc, ds in cfg.attention_resolutions, up=up))
                ch = mult * mc
                ds //= 2 if up else 1
        return cls(inputs, middle, outputs)


class Block(nn.ModuleList):
    """One entry of input_blocks / output_blocks: layers applied in order, each given what it needs."""

    def forward(self, h: torch.Tensor, emb: torch.Tensor, context: torch.Tensor, batch: int) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                h = layer(h, emb, batch)
            elif isinstance(layer, SpatialTransformer):
                h = layer(h, context)
            elif isinstance(layer, TemporalTransformer):
                h = layer(h, batch)
            else:
                h = layer(h)
        return h


class UNet3D(nn.Module):
    """Predicts the noise of a video latent `[b, c, t, h, w]` given timesteps, text context and fps."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        mc = cfg.model_channels
        emb_dim = mc * 4
        relative = cfg.temporal_length if cfg.use_relative_position else None
        text_tokens = cfg.text_tokens if cfg.image_attention else None

        def spatial_temporal(ch: int) -> list[nn.Module]:
            heads = ch // cfg.num_head_channels
            layers: list[nn.Module] = [SpatialTransformer(
                ch, heads, cfg.num_head_channels, cfg.transformer_depth, cfg.context_dim, cfg.use_linear,
                cfg.norm_groups, text_tokens)]
            if cfg.temporal_attention:
                layers.append(TemporalTransformer(
                    ch, heads, cfg.num_head_channels, cfg.temporal_transformer_depth, cfg.use_linear,
                    relative, cfg.use_causal_attention, cfg.norm_groups, cfg.frame_positions))
            return layers

        def res(ch_in: int, ch_out: int) -> ResBlock:
            return ResBlock(ch_in, emb_dim, ch_out, cfg.temporal_conv, cfg.dropout, cfg.norm_groups)

        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if cfg.fps_cond:
            self.fps_embedding = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if cfg.pooled_text:
            self.text_embedding = nn.Sequential(
                nn.Linear(cfg.context_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if cfg.frame_embedding:
            self.frame_embedding = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if cfg.guidance_embedding:  # registered here: a T2V-Turbo LoRA file's layer order counts on it
            self.time_cond_proj = nn.Linear(cfg.guidance_embedding, mc, bias=False)
        if cfg.motion_embedding:
            self.motion_cond_proj = nn.Linear(cfg.motion_embedding, mc, bias=False)
            self.combine_proj = nn.Linear(2 * mc, mc, bias=False)

        self.input_blocks = nn.ModuleList([Block([nn.Conv2d(cfg.in_channels, mc, 3, padding=1)])])
        if cfg.addition_attention:
            # Always 8 heads with Conv1d projections, whatever the config says elsewhere.
            self.init_attn = Block([TemporalTransformer(
                mc, 8, cfg.num_head_channels, cfg.transformer_depth, False, relative, cfg.use_causal_attention,
                cfg.norm_groups, cfg.frame_positions)])
        plan = BlockPlan.of(cfg)
        self.level_ends = plan.level_ends
        for step in plan.inputs:
            self.input_blocks.append(Block([Downsample(step.cin)]) if step.down else Block(
                [res(step.cin, step.cout), *(spatial_temporal(step.cout) if step.attention else [])]))
        ch = plan.middle
        self.middle_block = Block([res(ch, ch), *spatial_temporal(ch), res(ch, ch)])
        self.output_blocks = nn.ModuleList(Block([
            res(step.cin, step.cout), *(spatial_temporal(step.cout) if step.attention else []),
            *([Upsample(step.cout)] if step.up else [])]) for step in plan.outputs)

        self.out = nn.Sequential(GroupNorm32(cfg.norm_groups, plan.outputs[-1].cout), nn.SiLU(),
                                 nn.Conv2d(mc, cfg.out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                fps: torch.Tensor | int = 16, control: Optional[list[torch.Tensor]] = None,
                early_context: Optional[torch.Tensor] = None, guidance_scale: Optional[torch.Tensor] = None,
                motion_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
        """`context`: the text (and image) tokens `[b, n, d]`, or one set a frame `[b, t, n, d]`. `control`: a control
        adapter's features `[b, c, t, h, w]`, one per level (added after the level's last input block; the skip
        connection keeps the sum). `early_context`: the context of the input and middle blocks' spatial attention
        where it differs (FreeNoise's motion injection). `guidance_scale` and `motion_scale` `[b]`: the scales a UNet
        with a guidance (and motion) embedding takes as inputs; without them their term is 0."""
        b, _, frames, height, width = x.shape
        mc = self.cfg.model_channels
        t = t.expand(b) if t.ndim == 0 else t
        timestep = sinusoidal_embedding(t, mc).to(x.dtype)
        if guidance_scale is not None:
            timestep = timestep + self.scales_term(guidance_scale, motion_scale).to(x.dtype)
        emb = self.time_embed(timestep)
        if self.cfg.fps_cond:
            fps = torch.full_like(t, fps) if isinstance(fps, int) else fps.expand(b)
            emb = emb + self.fps_embedding(sinusoidal_embedding(fps, mc).to(x.dtype))
        if self.cfg.pooled_text and context.ndim == 3:
            emb = emb + self.text_embedding(context[:, -1])
        emb = emb.repeat_interleave(frames, dim=0)
        if self.cfg.pooled_text and context.ndim == 4:
            emb = emb + self.text_embedding(context[:, :, -1].flatten(0, 1))
        if self.cfg.frame_embedding:
            index = sinusoidal_embedding(torch.arange(frames, device=x.device), mc).to(x.dtype)
            emb = emb + self.frame_embedding(index).repeat(b, 1)
        context = by_frame(context, frames)
        early = context if early_context is None else by_frame(early_context, frames)

        h = x.transpose(1, 2).reshape(b * frames, -1, height, width)
        skips, added = [], control_by_block(self.level_ends, control)
        for i, block in enumerate(self.input_blocks):
            h = block(h, emb, early, b)
            if i == 0 and self.cfg.addition_attention:
                h = self.init_attn(h, emb, early, b)
            if i in added:
                h = h + added[i].transpose(1, 2).flatten(0, 1)
            skips.append(h)
        h = self.middle_block(h, emb, early, b)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, context, b)
        out = self.out(h)
        return out.view(b, frames, -1, height, width).transpose(1, 2)

    def scales_term(self, guidance: torch.Tensor, motion: Optional[torch.Tensor]) -> torch.Tensor:
        """What the guidance scale (and motion scale) add to the timestep's sinusoid, T2V-Turbo's way."""
        dtype = self.time_cond_proj.weight.dtype
        term = self.time_cond_proj(scale_embedding(guidance, self.cfg.guidance_embedding).to(dtype))
        if motion is None:
            return term
        motion_term = self.motion_cond_proj(scale_embedding(motion, self.cfg.motion_embedding).to(dtype))
        return self.combine_proj(torch.cat([term, motion_term], dim=1))


def scale_embedding(scale: torch.Tensor, dim: int) -> torch.Tensor:
    """A guidance scale `[b]` as `[sin(1000 w f), cos(1000 w f)]` `[b, dim]` in float32, the frequencies f from 1 down
    to 1/10000 over `dim / 2 - 1` intervals (not `dim / 2`, as the timestep's are; sine first): T2V-Turbo's."""
    half = dim // 2
    # The rate as a float32 scalar, times each index: 1000 w reaches thousands of radians, where one rounding of f
    # more or less moves the sine visibly.
    rate = torch.log(torch.tensor(10000.0)) / (half - 1)
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -rate).to(scale.device)
    args = (scale.float() * 1000)[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


def by_frame(context: torch.Tensor, frames: int) -> torch.Tensor:
    """A context `[b, n, d]` (the same for every frame) or `[b, t, n, d]` as one row a frame, `[b t, n, d]`."""
    return context.flatten(0, 1) if context.ndim == 4 else context.repeat_interleave(frames, dim=0)


def control_by_block(level_ends: list[int], control: Optional[list[torch.Tensor]]) -> dict[int, torch.Tensor]:
    """An adapter's features by the input block after which each is added; {} without control."""
    if control is None:
        return {}
    if len(control) != len(level_ends):
        raise ValueError(f"{len(control)} control features for a UNet of {len(level_ends)} levels")
    return dict(zip(level_ends, control))


def with_given_frames(x: torch.Tensor, given: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The input of a frame-conditioned UNet: the noisy latents with the given frames (where `mask`,
    `[b, 1, t, 1, 1]`, is 1) put back clean, the given clean latents (zeros elsewhere), and the mask as a
    channel. Clean given frames in the first slot keep training and sampling alike: the sampler's own
    latents at those positions drift (nothing trains the output there), and this discards them."""
    b, _, t, h, w = x.shape
    given = given * mask
    return torch.cat([x * (1 - mask) + given, given, mask.expand(b, 1, t, h, w).to(x.dtype)], dim=1)


def zero_init_residuals(unet: UNet3D) -> None:
    """Start every residual branch and the output at zero, as latent diffusion models are trained:
    the freshly built network is then the identity along its skips and learns faster."""
    for module in unet.modules():
        if isinstance(module, ResBlock):
            targets = [module.out_layers[-1]] + ([module.temopral_conv.conv4[-1]] if module.temopral_conv else [])
        elif isinstance(module, (SpatialTransformer, TemporalTransformer)):
            targets = [module.proj_out]
        else:
            continue
        for layer in targets:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
    nn.init.zeros_(unet.out[-1].weight)
    nn.init.zeros_(unet.out[-1].bias)
