"""The one config schema of vcraft and its presets (original VideoCrafter YAMLs: videocrafter_yaml.py).

A vcraft config is plain data: what the model is (`model`) and how to sample by default (`sampling`).
Its structure is validated here, once, by OmegaConf against the dataclasses below; generation settings
are checked in settings.py.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vcraft.errors import VcraftError

PACKAGE_DIR = Path(__file__).resolve().parent


@dataclass
class UNetConfig:
    # "videocrafter": VideoCrafter1/2 and vcraft's own (unet3d.py); "lvdm": the first release's 5-D UNet
    # (unet_lvdm.py), which reads only the sizes, num_heads, temporal_length and norm_groups below.
    family: str = "videocrafter"
    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    attention_resolutions: list[int] = field(default_factory=lambda: [4, 2, 1])
    num_res_blocks: int = 2
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 4, 4])
    num_head_channels: int = 64
    num_heads: int = 8  # the "lvdm" family: heads in every attention (their width: channels / heads)
    transformer_depth: int = 1
    temporal_transformer_depth: int = 1
    context_dim: int = 1024
    use_linear: bool = True
    temporal_conv: bool = False
    temporal_attention: bool = True
    use_relative_position: bool = False
    # vcraft's own small models: an absolute sinusoidal frame index on temporal attention's tokens (see
    # TemporalTransformer), so the model can place an object differently in each frame of a clip.
    frame_positions: bool = False
    # ... and a sinusoidal frame index through an MLP into every ResBlock's timestep embedding, so that
    # every block, not only temporal attention, knows which frame it works on (what it has shown so far:
    # README, "How well it follows prompts").
    frame_embedding: bool = False
    use_causal_attention: bool = False
    temporal_length: int = 16
    addition_attention: bool = False
    fps_cond: bool = False
    dropout: float = 0.0
    # vcraft's own small models: the text context's last token (it has seen the whole prompt through the
    # causal mask) is added to the timestep embedding, so every ResBlock knows the prompt, as SDXL does.
    pooled_text: bool = False
    # Spatial cross-attention also attends to image tokens, with keys and values of their own (VideoCrafter1's
    # image-to-video model): the context is `text_tokens` text tokens, then the image tokens.
    image_attention: bool = False
    text_tokens: int = 77
    # The guidance scale as an input (T2V-Turbo's `time_cond_proj_dim`): its sinusoidal embedding of this width,
    # projected and added to the timestep's sinusoid; 0: none. Such a UNet is sampled in a few steps, one pass each.
    guidance_embedding: int = 0
    # T2V-Turbo-v2's motion guidance scale as a second such input, combined with the first (`motion_cond_proj_dim`).
    motion_embedding: int = 0
    # GroupNorm groups (VideoCrafter: 32). With 32 channels, 32 groups would normalise each channel
    # on its own and wash out absolute levels such as colour, so small models use fewer.
    norm_groups: int = 32


@dataclass
class AutoencoderConfig:
    in_channels: int = 3
    out_ch: int = 3
    z_channels: int = 4
    embed_dim: int = 4
    ch: int = 128
    ch_mult: list[int] = field(default_factory=lambda: [1, 2, 4, 4])
    num_res_blocks: int = 2
    norm_groups: int = 32  # as UNetConfig.norm_groups


TEXT_FAMILIES = ("open_clip", "clip")  # models.text_encoder_class builds each
UNET_FAMILIES = ("videocrafter", "lvdm")  # models.unet_class builds each
SAMPLERS = ("ddim", "dpmpp-2m", "dpmpp-2m-sde", "unipc", "consistency")  # sampling.sampler: their functions


@dataclass
class TextEncoderConfig:
    family: str = "open_clip"  # which implementation (and tokenizer) the sizes below are for
    width: int = 1024
    heads: int = 16
    layers: int = 24
    context_length: int = 77
    vocab_size: int = 49408
    embed_dim: int = 1024
    layer: str = "penultimate"  # or "last"


@dataclass
class ImageEncoderConfig:
    """OpenCLIP's vision tower, read at all its tokens, and the Resampler that turns them into context tokens
    (VideoCrafter1's image-to-video model; defaults: ViT-H-14 and the sizes the original hard-codes)."""

    width: int = 1280
    heads: int = 16
    layers: int = 32
    patch_size: int = 14
    image_size: int = 224
    embed_dim: int = 1024  # CLIP's joint width: sizes the unused `visual.proj`
    # The checkpoint keeps CLIP's text embedding tables beside the vision tower (unused): their sizes.
    text_width: int = 1024
    context_length: int = 77
    vocab_size: int = 49408
    tokens: int = 16  # the Resampler's queries: image tokens in the UNet's context
    resampler_width: int = 1024
    resampler_depth: int = 4
    resampler_heads: int = 12
    resampler_head_dim: int = 64
    resampler_ff_mult: int = 4


CONTROL_SIGNALS = ("depth", "brightness")  # what a control adapter reads from a control video


@dataclass
class AdapterConfig:
    """A control adapter (models/adapter.py; defaults: VideoControl's depth adapter): one feature per UNet level."""

    signal: str = "depth"  # one of CONTROL_SIGNALS: MiDaS depth (model.depth) or each frame's brightness
    blocks: int = 2  # per level; its widths are the UNet's, level by level
    kernel: int = 1  # of the blocks' second convolution


@dataclass
class DepthConfig:
    """MiDaS DPT-hybrid's sizes (models/depth.py); the defaults are the official model's."""

    resnet_layers: list[int] = field(default_factory=lambda: [3, 4, 9])
    resnet_channels: list[int] = field(default_factory=lambda: [256, 512, 1024])
    stem_chs: int = 64
    vit_embed_dim: int = 768
    vit_depth: int = 12
    vit_heads: int = 12
    reassemble: list[int] = field(default_factory=lambda: [256, 512, 768, 768])
    features: int = 256


@dataclass
class ScheduleConfig:
    timesteps: int = 1000
    linear_start: float = 0.00085
    linear_end: float = 0.012
    use_scale: bool = False
    scale_a: float = 1.0
    scale_b: float = 0.3
    mid_step: int = 400
    fix_scale_bug: bool = False
    # Part of the noise's variance that is one draw common to all frames of a clip ("mixed" noise of
    # Ge et al. 2023, "Preserve Your Own Correlation"); 0, as in VideoCrafter: every frame's own.
    frame_noise_share: float = 0.0
    # DDIM draws one noise tensor at every step, eta 0 included (then unused), as the first release's sampler does,
    # so that a long video's later windows start from the noise the release's random stream would give them.
    noise_every_step: bool = False


@dataclass
class ModelConfig:
    unet: UNetConfig = field(default_factory=UNetConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    image_encoder: Optional[ImageEncoderConfig] = None  # set for models conditioned on an image
    adapter: Optional[AdapterConfig] = None  # set for models that follow a control video
    depth: Optional[DepthConfig] = None  # the depth estimator of a depth adapter
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    scale_factor: float = 0.18215
    parameterization: str = "eps"  # what the UNet predicts: "eps" (noise) or "v" (velocity)
    # The UNet also sees given latent frames and their mask (LVDM's prediction model): in_channels is
    # then 2 * latent channels + 1, and a video can be continued from its last frames.
    frame_conditioning: bool = False


@dataclass
class SamplingConfig:
    frames: int = 16
    height: int = 320
    width: int = 512
    sampler: Optional[str] = None  # one of SAMPLERS; None: consistency for a UNet with a guidance embedding, else ddim
    steps: int = 50
    guidance: float = 12.0
    # Guidance only while t >= guidance_min_t; below, the conditional prediction alone (a guidance interval,
    # Kynkaanniemi et al. 2024): late, low-noise steps shape details, which guidance only exaggerates.
    # 0: every step, as VideoCrafter.
    guidance_min_t: int = 0
    eta: float = 1.0
    fps: int = 28
    save_fps: int = 10
    # Videos longer than the model's clip (unet.temporal_length) are made window by window, each keeping
    # the last `overlap` latent frames of the one before (None: a quarter of the clip). `extend` is how a
    # window is tied to them: "mask" (models trained with frame_conditioning) or "replace" (any model);
    # None picks per model.
    overlap: Optional[int] = None
    extend: Optional[str] = None


@dataclass
class AutoencoderTraining:
    steps: int = 1000
    batch_size: int = 32  # frames
    lr: float = 1e-3
    kl_weight: float = 1e-6
    # Weight of a loss tying the first three latent channels (posterior mean) to the frame's RGB averaged
    # over each latent pixel; 0: off. See train_autoencoder.
    colour_anchor: float = 0.0


@dataclass
class TextTraining:
    steps: int = 300
    batch_size: int = 64  # captions
    lr: float = 3e-3


@dataclass
class DiffusionTraining:
    steps: int = 6000
    batch_size: int = 16  # videos
    lr: float = 1e-3
    warmup: int = 200
    weight_decay: float = 0.01
    ema: float = 0.998
    min_snr: Optional[float] = 5.0  # min-SNR-gamma loss weighting; None: plain MSE
    # Timesteps drawn as T * u**k, u uniform in [0, 1): 1 is uniform; below 1 favours the noisy end
    # (0.5: density rising linearly with t).
    timestep_exponent: float = 1.0
    caption_dropout: float = 0.1  # for classifier-free guidance
    given_frames_prob: float = 0.3  # share of clips that get their first frames given (frame_conditioning)
    max_given_frames: int = 8
    # Roll every clip that gets given frames by a random whole number of latent pixels (the shapes world wraps
    # around, so it stays a clip of its caption), so that continuations from anywhere in the frame are seen.
    shift_given: bool = False
    # Share of each batch taken from the clips that turn (train.turns), each given exactly its frames before the turn
    # and captioned with the new direction: what a prompt changing along a video asks of the next window.
    turn_prob: float = 0.0
    # Parts of the stage with settings of their own (resolved_phases), so that a recipe in parts is one command.
    phases: list[dict[str, Any]] = field(default_factory=list)
    # Exported: (1 - blend_share) x the final EMA + blend_share x the EMA at step blend_step (None: the final EMA).
    # Weight-space ensembling, as WiSE-FT does after fine-tuning: later phases' skills, earlier weights' robustness.
    blend_step: Optional[int] = None
    blend_share: float = 0.3

    def resolved_phases(self) -> list[tuple[int, DiffusionTraining]]:
        """`(until, settings)` of every phase in order. A phase `{until: N, field: value, ...}` trains the steps
        before N with these settings, the fields it names changed; its learning rate follows
        `lr_at(step, N, lr, warmup)`, a cosine ending at N. The last `until` is `steps`; without phases, one
        phase of `steps`."""
        if not self.phases:
            return [(self.steps, self)]
        base = OmegaConf.structured(replace(self, phases=[]))
        return [(phase["until"], _phase_settings(base, phase)) for phase in self.phases]


def _phase_changes(phase: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in phase.items() if k != "until"}


def _phase_settings(base: DictConfig, phase: dict[str, Any]) -> DiffusionTraining:
    return OmegaConf.to_object(OmegaConf.merge(base, _phase_changes(phase)))  # type: ignore[return-value]


@dataclass
class ControlTraining:
    """The control adapter's stage (`vcraft train --control`), on a trained model that stays frozen."""

    pairs: int = 3000  # (control video, clip) pairs of data/paths.py, drawn once
    steps: int = 1500
    batch_size: int = 8
    lr: float = 1e-3
    warmup: int = 50
    caption_dropout: float = 0.1


@dataclass
class TrainConfig:
    seed: int = 0
    videos: int = 12000  # synthetic clips, drawn once and reused every epoch
    turns: int = 0  # clips whose object changes direction (data.shapes.sample_turn), for phases with a turn_prob
    checkpoint_every: int = 250
    autoencoder: AutoencoderTraining = field(default_factory=AutoencoderTraining)
    text: TextTraining = field(default_factory=TextTraining)
    diffusion: DiffusionTraining = field(default_factory=DiffusionTraining)
    control: ControlTraining = field(default_factory=ControlTraining)


@dataclass
class WeightsSource:
    """Where `vcraft download` fetches a preset's official checkpoint on the Hugging Face Hub."""

    repo: str = MISSING  # e.g. VideoCrafter/VideoCrafter2
    file: str = "model.ckpt"
    revision: str = "main"
    size: Optional[int] = None  # bytes, as the Hub lists the file: for --list and messages before a download
    sha256: Optional[str] = None  # pinned, where known; the Hub's own checksum is verified in any case


@dataclass
class LoRASource(WeightsSource):
    """An official LoRA of a preset, fetched by `vcraft download NAME` and found by `--lora NAME`."""

    trigger: str = ""  # the words its authors added to every prompt (vcraft adds nothing: a prompt is as written)


@dataclass
class PartSource(WeightsSource):
    """A component's own weight file (a control adapter, a depth estimator): on the Hub (`repo`, `file`), or at
    `path` on this machine (an original YAML's `model_path`, made absolute when the config is read)."""

    repo: str = ""
    path: Optional[str] = None


@dataclass
class Config:
    name: str = MISSING
    description: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    weights: Optional[WeightsSource] = None  # None: the weights ship with vcraft (the embedded model)
    weights_of: Optional[str] = None  # the preset whose weights these are (found and converted under its name)
    # Components whose weights come in files of their own, by component name (loaders/components.py); a bundled
    # part (the embedded model's adapter) is `checkpoints/<preset>/<component>.safetensors` and needs no entry.
    parts: dict[str, PartSource] = field(default_factory=dict)
    loras: dict[str, LoRASource] = field(default_factory=dict)  # the model's official LoRAs, by name
    # A LoRA merged into the weights for good when the model loads: a model distilled as a LoRA of another's
    # (T2V-Turbo v1 of VideoCrafter2). Found as `parts` are (`checkpoints/<preset>/lora.*`, `path`, the Hub).
    lora: Optional[PartSource] = None
    train: Optional[TrainConfig] = None


def preset_dir() -> Path:
    """Presets ship inside the wheel (vcraft/configs) and live at the repository root in a checkout."""
    packaged = PACKAGE_DIR / "configs"
    return packaged if packaged.is_dir() else PACKAGE_DIR.parents[1] / "configs"


def preset_dirs() -> list[Path]:
    """$VCRAFT_PRESETS (a folder of the user's own preset YAMLs, which win over vcraft's), then vcraft's."""
    extra = os.environ.get("VCRAFT_PRESETS")
    return [Path(extra), preset_dir()] if extra else [preset_dir()]


def _preset_path(name: str) -> Path | None:
    return next((d / f"{name}.yaml" for d in preset_dirs() if (d / f"{name}.yaml").is_file()), None)


def preset_names() -> list[str]:
    return sorted({p.stem for d in preset_dirs() for p in d.glob("*.yaml")})


def _validated(data: Any, origin: str) -> Config:
    try:
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), data))
    except OmegaConfBaseException as exc:
        msg = str(exc).splitlines()[0]
        raise VcraftError(f"invalid config {origin}: {msg}") from None
    problem = _model_problem(cfg.model) or _train_problem(cfg.train, cfg.model)  # type: ignore[union-attr]
    if problem:
        raise VcraftError(f"invalid config {origin}: {problem}")
    return cfg  # type: ignore[return-value]


def _model_problem(m: ModelConfig) -> str | None:
    """What would keep the modules from being built, said as a config error."""
    latent = m.autoencoder.embed_dim
    inputs = 2 * latent + 1 if m.frame_conditioning else latent
    if m.parameterization not in ("eps", "v"):
        return f"model.parameterization must be 'eps' or 'v', not '{m.parameterization}'"
    if not 0 <= m.schedule.frame_noise_share < 1:
        return f"model.schedule.frame_noise_share must be in [0, 1), not {m.schedule.frame_noise_share}"
    if m.unet.in_channels != inputs or m.unet.out_channels != latent:
        return (f"the UNet must take {inputs} channels and return {latent} (latent channels {latent}"
                f"{', plus given frames and their mask' if m.frame_conditioning else ''}), "
                f"not {m.unet.in_channels} and {m.unet.out_channels}")
    if (m.image_encoder is not None) != m.unet.image_attention:
        return "model.image_encoder and model.unet.image_attention go together: set both or neither"
    if m.adapter is not None:
        if m.adapter.signal not in CONTROL_SIGNALS:
            return f"model.adapter.signal must be one of {', '.join(CONTROL_SIGNALS)}, not '{m.adapter.signal}'"
        if m.unet.num_res_blocks < 1 or m.adapter.blocks < 1:
            return "a control adapter needs at least one block per level, in the UNet and in the adapter"
    if (m.depth is not None) != (m.adapter is not None and m.adapter.signal == "depth"):
        return "model.depth (the depth estimator's sizes) goes with a depth adapter (model.adapter.signal: depth)"
    if m.unet.motion_embedding and not m.unet.guidance_embedding:
        return "model.unet.motion_embedding needs model.unet.guidance_embedding (the two are combined)"
    if m.unet.guidance_embedding and m.unet.family != "videocrafter":
        return "model.unet.guidance_embedding is for the videocrafter UNet family"
    if m.unet.family not in UNET_FAMILIES:
        return f"model.unet.family must be one of {', '.join(UNET_FAMILIES)}, not '{m.unet.family}'"
    if m.text_encoder.family not in TEXT_FAMILIES:
        return f"model.text_encoder.family must be one of {', '.join(TEXT_FAMILIES)}, not '{m.text_encoder.family}'"
    if m.text_encoder.layer not in ("penultimate", "last"):
        return f"model.text_encoder.layer must be 'penultimate' or 'last', not '{m.text_encoder.layer}'"
    divides = [
        (m.unet.norm_groups, [m.unet.model_channels * k for k in m.unet.channel_mult], "model.unet.norm_groups"),
        (m.unet.num_heads, [m.unet.model_channels * k for k in m.unet.channel_mult], "model.unet.num_heads")
        if m.unet.family == "lvdm" else
        (m.unet.num_head_channels, [m.unet.model_channels * k for k in m.unet.channel_mult],
         "model.unet.num_head_channels"),
        (m.autoencoder.norm_groups, [m.autoencoder.ch * k for k in m.autoencoder.ch_mult],
         "model.autoencoder.norm_groups"),
        (m.text_encoder.heads, [m.text_encoder.width], "model.text_encoder.heads"),
    ]
    if m.image_encoder is not None:
        divides.append((m.image_encoder.heads, [m.image_encoder.width], "model.image_encoder.heads"))
    for divisor, channels, name in divides:
        bad = [c for c in channels if divisor < 1 or c % divisor]
        if bad:
            return f"{name} ({divisor}) must divide every channel count it applies to, and {bad[0]} is not a multiple"
    return None


def _train_problem(t: TrainConfig | None, model: ModelConfig) -> str | None:
    if t is None:
        return None
    d = t.diffusion
    problem = _diffusion_settings_problem("train.diffusion", d, t, model)
    if problem:
        return problem
    base = OmegaConf.structured(replace(d, phases=[]))
    known = set(base.keys()) - {"steps", "phases", "blend_step", "blend_share"}
    previous = 0
    for i, phase in enumerate(d.phases):
        name = f"train.diffusion.phases[{i}]"
        until = phase.get("until")
        if not isinstance(until, int) or isinstance(until, bool) or until <= previous:
            after = f" (where phases[{i - 1}] ends)" if i else ""
            return f"{name}.until must be a whole number of steps above {previous}{after}, not {until!r}"
        unknown = sorted(set(_phase_changes(phase)) - known)
        if unknown:
            return f"{name} sets '{unknown[0]}', which a phase cannot set; it can set: {', '.join(sorted(known))}"
        try:
            settings = _phase_settings(base, phase)
        except OmegaConfBaseException as exc:
            return f"{name}: {str(exc).splitlines()[0]}"
        problem = _diffusion_settings_problem(name, settings, t, model)
        if problem:
            return problem
        previous = until
    if d.phases and previous != d.steps:
        return (f"train.diffusion.phases end at step {previous} but train.diffusion.steps is {d.steps}: make them "
                f"equal, or set train.diffusion.phases=[] for one phase of {d.steps} steps")
    if d.blend_step is not None and not 0 <= d.blend_step < d.steps:
        return f"train.diffusion.blend_step must be a step from 0 to {d.steps - 1}, or null, not {d.blend_step}"
    if not 0 < d.blend_share < 1:
        return f"train.diffusion.blend_share must be between 0 and 1, not {d.blend_share}"
    return None


def _diffusion_settings_problem(name: str, d: DiffusionTraining, t: TrainConfig, model: ModelConfig) -> str | None:
    if not d.timestep_exponent > 0:
        return f"{name}.timestep_exponent must be above 0"
    if not 0 <= d.turn_prob <= 1:
        return f"{name}.turn_prob must be between 0 and 1, not {d.turn_prob}"
    if d.turn_prob and not (t.turns > 0 and model.frame_conditioning):
        return (f"{name}.turn_prob needs train.turns above 0 and model.frame_conditioning (the clips that turn are "
                "given their frames before the turn)")
    return None


def _read_yaml(path: Path) -> DictConfig:
    if not path.is_file():
        raise VcraftError(f"config file not found: {path}")
    try:
        data = OmegaConf.load(path)
    except Exception as exc:  # yaml.YAMLError and friends: report, do not trace
        raise VcraftError(f"cannot read config {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, DictConfig):
        raise VcraftError(f"config {path} is not a YAML mapping")
    return data


def load_preset(name: str) -> Config:
    path = _preset_path(name)
    if path is None:
        raise VcraftError(f"unknown model '{name}'; choose one of: {', '.join(preset_names())}")
    return _validated(_read_yaml(path), str(path))


def load_config(path: str | os.PathLike, overrides: list[str] = ()) -> Config:
    """Read a vcraft YAML or an original VideoCrafter inference YAML, then apply `key=value` overrides."""
    path = Path(path)
    data = _read_yaml(path)
    if "model" in data and "target" in data.model:
        from vcraft.videocrafter_yaml import from_videocrafter

        data = OmegaConf.create(from_videocrafter(data, path))
    elif "name" not in data:
        data.name = path.stem
    return apply_overrides(_validated(data, str(path)), overrides, str(path))


def apply_overrides(cfg: Config, overrides: list[str], origin: str = "") -> Config:
    if not overrides:
        return cfg
    for item in overrides:
        if "=" not in item:
            raise VcraftError(f"--set expects key=value, got '{item}'")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cfg), OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as exc:
        raise VcraftError(f"invalid --set override: {str(exc).splitlines()[0]}") from None
    return _validated(merged, origin or cfg.name)
