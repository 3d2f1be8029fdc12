"""The public Python API: load a model, turn prompts into videos.

    from vcraft import TextToVideo
    pipe = TextToVideo.from_pretrained("vc2-512", device="auto", dtype="auto")
    video = pipe("a corgi surfing a wave", frames=16, seed=1)   # uint8 [T, H, W, 3]

Data flows one way: prompts -> text embeddings -> latents (DDIM over the UNet) -> frames (VAE decode).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import torch

from vcraft.checkpoints import DTYPES, load_state_dict
from vcraft.config import (Config, SamplingConfig, apply_overrides, load_config, load_preset, preset_dir,
                           validate_sampling)
from vcraft.errors import VcraftError
from vcraft.loading import Models, identify_preset, load_models
from vcraft.models.unet3d import with_given_frames
from vcraft.sampling.ddim import Denoiser, ddim_sample, ddim_timesteps, eps_from_v, guided_denoiser
from vcraft.sampling.long_video import extend_video, replace_known, window_count
from vcraft.sampling.schedule import frame_noise

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


def _continuing(unet: torch.nn.Module, x: torch.Tensor, given: Optional[torch.Tensor],
                uncond_sees_given: bool = True) -> Callable:
    """The UNet of a frame-conditioned model with the first frames fixed to `given` (none: no frames).
    Both passes of guidance see them; `uncond_sees_given=False` hides them and their mask from the
    unconditional pass, as LVDM guides (scripts/check_long_video.py compares the two: hiding them lost
    colour and motion and made seams larger with the shapes model)."""
    b, _, t = x.shape[:3]
    known = torch.zeros_like(x)
    mask = torch.zeros((b, 1, t, 1, 1), device=x.device, dtype=x.dtype)
    if given is not None:
        known[:, :, :given.shape[2]] = given
        mask[:, :, :given.shape[2]] = 1

    def run(xs: torch.Tensor, t_: torch.Tensor, context: torch.Tensor, fps: torch.Tensor) -> torch.Tensor:
        copies = xs.shape[0] // b  # classifier-free guidance stacks the batch: conditional first
        frames, masks = known.repeat(copies, 1, 1, 1, 1), mask.repeat(copies, 1, 1, 1, 1)
        if not uncond_sees_given:
            frames[b:], masks[b:] = 0, 0
        return unet(with_given_frames(xs, frames, masks), t_, context, fps)

    return run


def _generators(seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator("cpu").manual_seed(s) for s in seeds]


def frames_to_uint8(video: torch.Tensor) -> torch.Tensor:
    """`[b, 3, t, H, W]` in [-1, 1] -> `[b, t, H, W, 3]` uint8, truncating as the reference does."""
    return ((video.float().clamp(-1, 1) + 1) / 2 * 255).to(torch.uint8).permute(0, 2, 3, 4, 1)


class TextToVideo:
    """A loaded model: text encoder, UNet, autoencoder and schedule, run on one device in one dtype.
    With `offload`, the modules wait in CPU memory and each visits the device only while its stage runs,
    so the device holds one stage's weights at a time."""

    def __init__(self, config: Config, models: Models, device: torch.device, dtype: torch.dtype,
                 offload: bool = False):
        self.config = config
        self.text_encoder = models.text_encoder
        self.unet = models.unet
        self.autoencoder = models.autoencoder
        self.schedule = models.schedule
        self.device = device
        self.dtype = dtype
        self.offload = offload

    @classmethod
    def from_pretrained(cls, model: str = "shapes", ckpt: str | os.PathLike | None = None,
                        device: str = "auto", dtype: str = "auto", overrides: list[str] = (),
                        offload: bool = False, encoder: bool = False) -> "TextToVideo":
        """`model` is a preset name or the path of a config (vcraft or original VideoCrafter YAML);
        `ckpt` a `.ckpt`/`.safetensors` file (default: the preset's checkpoint location); `encoder` also
        loads the autoencoder's encoder (for `autoencoder.encode`; generating never needs it)."""
        cfg = load_config(model, overrides) if Path(model).suffix in (".yaml", ".yml") else \
            apply_overrides(load_preset(model), list(overrides))
        return cls.from_config(cfg, ckpt, device, dtype, offload, encoder)

    @classmethod
    def from_config(cls, cfg: Config, ckpt: str | os.PathLike | None = None, device: str = "auto",
                    dtype: str = "auto", offload: bool = False, encoder: bool = False) -> "TextToVideo":
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        path = Path(ckpt) if ckpt is not None else find_checkpoint(cfg)
        state = load_state_dict(path)
        try:
            models = load_models(cfg.model, state, str(path), torch.device("cpu") if offload else dev, dt, encoder)
        except VcraftError as exc:
            match = identify_preset(state)
            if match is None or match == cfg.name:
                raise
            raise VcraftError(f"{exc}; the file is a '{match}' checkpoint: use --model {match}") from None
        return cls(cfg, models, dev, dt, offload)

    def compile(self, **options) -> "TextToVideo":
        """Compile the UNet with torch.compile (in place; returns self; `options` go to torch.compile, e.g.
        mode="max-autotune"). The first step at each new shape then compiles for a minute or more, and every
        later step runs faster: 1.6x on an H100 (README). Off unless asked for, since short runs would spend
        more time compiling than they save."""
        self.unet.compile(**options)
        return self

    @contextmanager
    def _on_device(self, module: torch.nn.Module) -> Iterator[None]:
        """Offloading: `module` on the device for the duration of the block, then back in CPU memory."""
        if not self.offload:
            yield
            return
        module.to(self.device)
        try:
            yield
        finally:
            module.to("cpu")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()  # give the freed weights back before the next stage arrives

    @torch.inference_mode()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        # One prompt at a time, like the UNet passes in _sample: a batched matrix product may round a row
        # differently from the same row alone, and a video must not depend on its batch. Each distinct prompt
        # once: a batch's negative prompts are usually all "".
        with self._on_device(self.text_encoder):
            encoded = {p: self.text_encoder.encode([p]) for p in dict.fromkeys(prompts)}
        return torch.cat([encoded[p] for p in prompts]).to(self.device)

    @torch.inference_mode()
    def sample(self, cond: torch.Tensor, uncond: Optional[torch.Tensor], seeds: list[int], frames: int,
               height: int, width: int, steps: int, guidance: float, eta: float, fps: int,
               callback: Optional[Callable[[int, int], None]] = None,
               given: Optional[torch.Tensor] = None, extend: str = "mask", guidance_min_t: int = 0) -> torch.Tensor:
        """Final latents `[len(seeds), c, frames, h, w]` of one clip; video k's noise comes from seeds[k]
        alone: its initial noise, then (eta > 0) one draw per step, from a CPU generator in float32.
        `given`: clean latents `[len(seeds), c, k, h, w]` of the first k frames, which the clip continues
        and starts with; `extend` says how: "mask" (frame-conditioned models: the UNet sees them) or
        "replace" (any model: put back, noised to each step's level). Guidance applies at timesteps
        >= `guidance_min_t` only."""
        return self._sample(cond, uncond, _generators(seeds), frames, height, width, steps, guidance, eta, fps,
                            callback, given, extend, guidance_min_t)

    def sample_long(self, cond: torch.Tensor, uncond: Optional[torch.Tensor], seeds: list[int],
                    settings: SamplingConfig, callback: Optional[Callable[[int, int], None]] = None
                    ) -> Iterator[torch.Tensor]:
        """Latents of videos of any length (validated `settings`), yielded window by window as new frames
        `[len(seeds), c, n, h, w]`; past the model's clip, each window continues the last `overlap` frames
        of the one before. Each video's noise, window after window, comes from its own seed's generator.
        `callback(step, total)` counts the steps of all windows."""
        s = settings
        clip = self.config.model.unet.temporal_length
        gens = _generators(seeds)
        windows = window_count(s.frames, clip, s.overlap)
        done = [0]

        def window(kept: Optional[torch.Tensor]) -> torch.Tensor:
            offset, done[0] = done[0], done[0] + 1

            def report(i: int, total: int) -> None:
                if callback is not None:
                    callback(offset * total + i, windows * total)

            with torch.inference_mode():
                return self._sample(cond, uncond, gens, min(s.frames, clip), s.height, s.width, s.steps,
                                    s.guidance, s.eta, s.fps, report, kept, s.extend, s.guidance_min_t)

        yield from extend_video(window, s.frames, clip, s.overlap)

    def denoiser(self, x: torch.Tensor, cond: torch.Tensor, uncond: Optional[torch.Tensor], fps: int,
                 guidance: float, given: Optional[torch.Tensor] = None, guidance_min_t: int = 0) -> Denoiser:
        """The model as a noise predictor for latents shaped like `x`, guided by `cond` against `uncond`
        (one row per video) at timesteps >= `guidance_min_t`; frame-conditioned models see `given`, the
        clean first frames, if any."""
        net = self.unet
        if self.config.model.frame_conditioning:
            net = _continuing(self.unet, x, given)
        fps_t = torch.full((x.shape[0],), fps, device=self.device, dtype=torch.long)
        denoise = guided_denoiser(net, cond.to(self.dtype), None if uncond is None else uncond.to(self.dtype),
                                  fps_t, guidance, guidance_min_t)
        return eps_from_v(denoise, self.schedule) if self.config.model.parameterization == "v" else denoise

    def _sample(self, cond: torch.Tensor, uncond: Optional[torch.Tensor], gens: list[torch.Generator],
                frames: int, height: int, width: int, steps: int, guidance: float, eta: float, fps: int,
                callback: Optional[Callable[[int, int], None]], given: Optional[torch.Tensor],
                extend: str, guidance_min_t: int = 0) -> torch.Tensor:
        f = self.autoencoder.downsample
        channels = self.config.model.autoencoder.embed_dim

        def draw(_: int = 0, n: int = frames) -> torch.Tensor:
            def one(g: torch.Generator) -> torch.Tensor:
                return frame_noise(self.schedule, lambda k: torch.randn((1, channels, k, height // f, width // f),
                                                                        generator=g, dtype=torch.float32), n)
            return torch.cat([one(g) for g in gens]).to(self.device, self.dtype)

        x = draw()
        keep = None
        if given is not None:
            given = given.to(self.device, self.dtype)
            if given.shape[2] > frames or given.shape[:2] != x.shape[:2] or given.shape[3:] != x.shape[3:]:
                raise VcraftError(f"given latents {list(given.shape)} do not fit a video of latents {list(x.shape)}")
            if extend == "replace":
                # Noised with the window's own starting noise at those frames: DDIM's deterministic path from
                # it ends at the kept latents, and it shares the window's frame-common draw (frame_noise_share).
                keep = replace_known(given, x[:, :, :given.shape[2]].clone(), self.schedule)
            elif not self.config.model.frame_conditioning:
                raise VcraftError(f"model '{self.config.name}' was not trained to continue given frames; "
                                  "use --extend replace")
        shown = given if extend == "mask" else None  # frames the UNet itself sees

        # Each video gets UNet calls of its own (its two guidance passes together): matrix-product and
        # convolution kernels are picked by batch size and round differently, so one call for the whole batch
        # would make a video's pixels depend on how many others share it.
        videos = [self.denoiser(x[i:i + 1], cond[i:i + 1], None if uncond is None else uncond[i:i + 1], fps,
                                guidance, None if shown is None else shown[i:i + 1], guidance_min_t)
                  for i in range(len(gens))]

        def denoise(xs: torch.Tensor, t: int) -> torch.Tensor:
            return torch.cat([one(xs[i:i + 1], t) for i, one in enumerate(videos)])

        total = len(ddim_timesteps(steps, self.schedule.timesteps))

        def report(i: int, *_: torch.Tensor) -> None:
            if callback is not None:
                callback(i + 1, total)

        with self._on_device(self.unet):
            out = ddim_sample(denoise, x, self.schedule, steps, eta, draw, report, keep)
        if given is not None:  # exactly the given latents, which the sampler only approaches
            out[:, :, :given.shape[2]] = given
        return out

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor, chunk: int | None = None) -> Iterator[torch.Tensor]:
        """Yield uint8 frames `[b, n, H, W, 3]` on the CPU, a few at a time (see decode_chunks)."""
        with self._on_device(self.autoencoder):
            for part in self.autoencoder.decode_chunks(latents, chunk):
                yield frames_to_uint8(part).cpu()

    def stream(self, prompt: str, settings: SamplingConfig, seed: int, negative: str | None = None,
               callback: Optional[Callable[[int, int], None]] = None) -> Iterator[np.ndarray]:
        """Generate one video and yield its uint8 frames `[n, H, W, 3]` chunk by chunk, window by window
        for long videos, so memory does not grow with the length."""
        settings = validate_sampling(settings, self.config.model)
        cond = self.encode_prompts([prompt])
        uncond = self.encode_prompts([negative or ""]) if settings.guidance != 1.0 else None
        for latents in self.sample_long(cond, uncond, [seed], settings, callback):
            for chunk in self.decode(latents):
                yield chunk[0].numpy()

    def __call__(self, prompt: str, seed: int = 0, negative: str | None = None,
                 callback: Optional[Callable[[int, int], None]] = None, **settings) -> np.ndarray:
        """One video as uint8 `[T, H, W, 3]`. Settings (frames, height, width, steps, guidance, guidance_min_t,
        eta, fps, overlap, extend) default to the config's."""
        chosen = replace(self.config.sampling, **settings)
        return np.concatenate(list(self.stream(prompt, chosen, seed, negative, callback)))
