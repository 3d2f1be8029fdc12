"""The public Python API: load a model, turn prompts into videos.

    from vcraft import TextToVideo
    pipe = TextToVideo.from_pretrained("vc2-512", device="auto", dtype="auto")
    video = pipe("a corgi surfing a wave", frames=16, seed=1)   # uint8 [T, H, W, 3]

Data flows one way: prompts -> text embeddings -> latents (DDIM over the UNet) -> frames (VAE decode).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch

from vcraft.checkpoints import DTYPES, check_schedule, load_state_dict, place, split_state_dict
from vcraft.config import Config, ModelConfig, apply_overrides, load_config, load_preset, preset_dir
from vcraft.errors import VcraftError
from vcraft.models.autoencoder import VideoAutoencoder, convert_ldm_vae_keys
from vcraft.models.text_encoder import TextEncoder
from vcraft.models.unet3d import UNet3D
from vcraft.sampling.ddim import ddim_sample, ddim_timesteps, guided_denoiser
from vcraft.sampling.schedule import Schedule, make_schedule, scale_array

CHECKPOINT_NAMES = ("model.safetensors", "model.ckpt")


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise VcraftError(f"unknown device '{device}'; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise VcraftError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise VcraftError("--device mps was asked for but MPS is not available; use --device cpu")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float16 if device.type == "mps" else torch.float32
    if dtype not in DTYPES:
        raise VcraftError(f"unknown dtype '{dtype}'; use auto, fp32, fp16 or bf16")
    return DTYPES[dtype]


def checkpoint_dirs(preset: str) -> list[Path]:
    """Where a preset's weights are looked for: $VCRAFT_CHECKPOINTS/<preset>, then checkpoints/<preset>."""
    dirs = []
    if os.environ.get("VCRAFT_CHECKPOINTS"):
        dirs.append(Path(os.environ["VCRAFT_CHECKPOINTS"]) / preset)
    dirs.append(preset_dir().parent / "checkpoints" / preset)
    return dirs


def find_checkpoint(cfg: Config) -> Path:
    dirs = checkpoint_dirs(cfg.name)
    for d in dirs:
        for name in CHECKPOINT_NAMES:
            if (d / name).is_file():
                return d / name
    where = " or ".join(str(d) for d in dirs)
    hint = f" (download it from {cfg.weights_url})" if cfg.weights_url else ""
    raise VcraftError(f"no checkpoint for model '{cfg.name}': put model.ckpt or model.safetensors in {where}"
                      f"{hint}, or pass --ckpt PATH")


@dataclass
class Models:
    text_encoder: TextEncoder
    unet: UNet3D
    autoencoder: VideoAutoencoder
    schedule: Schedule


def build_models(cfg: ModelConfig, device: str | torch.device = "meta") -> Models:
    """Instantiate the modules; on the meta device (the default) this allocates nothing."""
    with torch.device(device):
        modules = (TextEncoder(cfg.text_encoder), UNet3D(cfg.unet), VideoAutoencoder(cfg.autoencoder, cfg.scale_factor))
    return Models(*modules, make_schedule(cfg.schedule))


def load_models(cfg: ModelConfig, state: dict[str, torch.Tensor], source: str,
                device: torch.device = torch.device("cpu"), dtype: torch.dtype = torch.float32) -> Models:
    """Build on the meta device and place a checkpoint's tensors strictly, in the target dtype."""
    parts = split_state_dict(state, source)
    try:
        models = build_models(cfg)
    except (ValueError, AssertionError) as exc:
        raise VcraftError(f"invalid model config: {exc}") from None
    place(models.unet, parts.unet, "UNet", source, dtype)
    place(models.text_encoder, parts.text, "text encoder", source, dtype)
    vae = convert_ldm_vae_keys(parts.vae, cfg.autoencoder)
    if len(vae) != len(parts.vae):
        raise VcraftError(f"{source} does not fit the autoencoder of this config: "
                          f"{len(parts.vae) - len(vae)} keys could not be mapped")
    place(models.autoencoder.vae, vae, "autoencoder", source, dtype)
    scale_full = torch.tensor(scale_array(cfg.schedule), dtype=torch.float32)
    check_schedule(parts.schedule, models.schedule.alphas_cumprod, scale_full, source)
    for module in (models.text_encoder, models.unet, models.autoencoder):
        module.to(device).eval().requires_grad_(False)
    return models


def _initial_noise(seed: int, shape: tuple[int, ...]) -> tuple[torch.Generator, torch.Tensor]:
    gen = torch.Generator("cpu").manual_seed(seed)
    return gen, torch.randn((1, *shape), generator=gen, dtype=torch.float32)


def frames_to_uint8(video: torch.Tensor) -> torch.Tensor:
    """`[b, 3, t, H, W]` in [-1, 1] -> `[b, t, H, W, 3]` uint8, truncating as the reference does."""
    return ((video.float().clamp(-1, 1) + 1) / 2 * 255).to(torch.uint8).permute(0, 2, 3, 4, 1)


class TextToVideo:
    """A loaded model: text encoder, UNet, autoencoder and schedule on one device, in one dtype."""

    def __init__(self, config: Config, models: Models, device: torch.device, dtype: torch.dtype):
        self.config = config
        self.text_encoder = models.text_encoder
        self.unet = models.unet
        self.autoencoder = models.autoencoder
        self.schedule = models.schedule
        self.device = device
        self.dtype = dtype

    @classmethod
    def from_pretrained(cls, model: str = "vc2-512", ckpt: str | os.PathLike | None = None,
                        device: str = "auto", dtype: str = "auto", overrides: list[str] = ()) -> "TextToVideo":
        """`model` is a preset name or the path of a config (vcraft or original VideoCrafter YAML);
        `ckpt` a `.ckpt`/`.safetensors` file (default: the preset's checkpoint location)."""
        cfg = load_config(model, overrides) if Path(model).suffix in (".yaml", ".yml") else \
            apply_overrides(load_preset(model), list(overrides))
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        path = Path(ckpt) if ckpt is not None else find_checkpoint(cfg)
        state = load_state_dict(path)
        return cls(cfg, load_models(cfg.model, state, str(path), dev, dt), dev, dt)

    @torch.inference_mode()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        return self.text_encoder.encode(prompts)

    @torch.inference_mode()
    def sample(self, cond: torch.Tensor, uncond: Optional[torch.Tensor], seeds: list[int], frames: int,
               height: int, width: int, steps: int, guidance: float, eta: float, fps: int,
               callback: Optional[Callable[[int, int], None]] = None) -> torch.Tensor:
        """Sample final latents `[len(seeds), c, frames, h, w]`; video k's noise comes from seeds[k] only."""
        f = self.autoencoder.downsample
        shape = (self.config.model.unet.in_channels, frames, height // f, width // f)
        gens, noise = zip(*(_initial_noise(s, shape) for s in seeds))
        x = torch.cat(noise).to(self.device, self.dtype)
        fps_t = torch.full((len(seeds),), fps, device=self.device, dtype=torch.long)
        denoise = guided_denoiser(self.unet, cond.to(self.dtype), None if uncond is None else uncond.to(self.dtype),
                                  fps_t, guidance)

        def step_noise(_: int) -> torch.Tensor:
            return torch.cat([torch.randn((1, *shape), generator=g, dtype=torch.float32) for g in gens])

        def report(i: int, *_: torch.Tensor) -> None:
            if callback is not None:
                callback(i + 1, n_steps)

        n_steps = len(ddim_timesteps(steps, self.schedule.timesteps))
        return ddim_sample(denoise, x, self.schedule, steps, eta, step_noise, report)

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor, chunk: int = 4) -> Iterator[torch.Tensor]:
        """Yield uint8 frames `[b, n, H, W, 3]`, a few at a time."""
        for part in self.autoencoder.decode_chunks(latents, chunk):
            yield frames_to_uint8(part).cpu()

    def __call__(self, prompt: str, frames: int | None = None, height: int | None = None,
                 width: int | None = None, steps: int | None = None, guidance: float | None = None,
                 eta: float | None = None, fps: int | None = None, seed: int = 0, negative: str | None = None,
                 callback: Optional[Callable[[int, int], None]] = None) -> torch.Tensor:
        """One video as uint8 `[T, H, W, 3]`; unset settings take the config's defaults."""
        d = self.config.sampling
        guidance = d.guidance if guidance is None else guidance
        cond = self.encode_prompts([prompt])
        uncond = self.encode_prompts([negative or ""]) if guidance != 1.0 else None
        latents = self.sample(
            cond, uncond, [seed], frames or d.frames, height or d.height, width or d.width, steps or d.steps,
            guidance, d.eta if eta is None else eta, fps or d.fps, callback)
        return torch.cat(list(self.decode(latents)), dim=1)[0]
