"""The public Python API: load a model, turn prompts into videos.

    from vcraft import TextToVideo
    pipe = TextToVideo.from_pretrained("shapes")
    video = pipe("a red circle moving left", seed=1)   # uint8 [T, H, W, 3]

One generation path, read top to bottom in `latents`: prompts -> text embeddings -> window by window,
noise -> sampler over the denoiser -> latents; then `decode` turns them into frames, a few at a time.
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import numpy as np
import torch

from vcraft.config import Config, apply_overrides, load_config, load_preset
from vcraft.errors import VcraftError
from vcraft.loaders.checkpoints import load_state_dict
from vcraft.loaders.components import BY_NAME, Models
from vcraft.loaders.devices import resolve_device, resolve_dtype
from vcraft.loaders.loading import identify_preset, load_models
from vcraft.loaders.lora import LoRA, Merged, open_lora, read_lora
from vcraft.loaders.weights import PART_COMPONENTS, find_checkpoint, find_merged_lora, find_parts
from vcraft.models.adapter import brightness, grey, normalise_frames
from vcraft.models.depth import depth_maps
from vcraft.pipeline.control import control_indices, scaled_frames, video_tensor
from vcraft.pipeline.frames import frames_tensor, frames_to_uint8, picture_tensor
from vcraft.pipeline.memory import check_fits
from vcraft.pipeline.settings import Settings, made_at_once, make_settings
from vcraft.sampling import Callback, model_timesteps, sampler, step_count
from vcraft.sampling.conditioning import Conditioning
from vcraft.sampling.denoisers import Denoiser
from vcraft.sampling.freenoise import frame_contexts, fused_windows, injection_steps, reschedule, tiled_frames, windows
from vcraft.sampling.long_video import replace_given, window_count, window_prompts
from vcraft.sampling.schedule import draw_noise

# T2V-Turbo-v2's motion guidance acts on the noisiest 30% of the timesteps (its pipeline's default `percentage`).
MOTION_SHARE = 0.3
Progress = Callable[[int, int], None]  # progress(step, total) of a whole video's denoising steps, for users


class TextToVideo:
    """A loaded model (its components: loaders/components.py, and its schedule), run on one device in one dtype.
    Despite its name it makes every kind of video the model can: from text, from a picture (image-to-video models,
    `image=`), and the continuation of a given video (`continues=`), any length, window by window.
    With `offload`, the modules wait in CPU memory and each visits the device only while its stage runs,
    so the device holds one stage's weights at a time."""

    def __init__(self, config: Config, models: Models, device: torch.device, dtype: torch.dtype,
                 offload: bool = False):
        self.config = config
        self.text_encoder = models.text_encoder
        self.unet = models.unet
        self.autoencoder = models.autoencoder
        self.image_encoder = models.image_encoder
        self.image_projector = models.image_projector
        self.adapter = models.adapter
        self.depth_estimator = models.depth_estimator
        self.schedule = models.schedule
        self.merged = Merged(models, config.model)
        self.device = device
        self.dtype = dtype
        self.offload = offload

    @classmethod
    def from_pretrained(cls, model: str = "shapes", ckpt: str | os.PathLike | None = None,
                        device: str = "auto", dtype: str = "auto", overrides: list[str] = (),
                        offload: bool = False, encoder: bool = False,
                        lora: Sequence[str | os.PathLike | tuple[str | os.PathLike, float]] = (),
                        adapter: str | os.PathLike | None = None, unet: str | os.PathLike | None = None
                        ) -> "TextToVideo":
        """`model` is a preset name or the path of a config (vcraft or original VideoCrafter YAML);
        `ckpt` a `.ckpt`/`.safetensors` file (default: the preset's checkpoint location); `encoder` also
        loads the autoencoder's encoder (for `autoencoder.encode`; generating never needs it); `lora` LoRA files or
        official LoRA names, each alone (scale 1) or as (file or name, scale), merged removably (see `add_lora`);
        `adapter` a control adapter's file, for a config whose preset gives none (an original VideoControl YAML);
        `unet` a whole UNet's state dict (keys from the UNet, as T2V-Turbo-v2's `unet_mg.pt`) in place of the
        model's."""
        cfg = load_config(model, overrides) if Path(model).suffix in (".yaml", ".yml") else \
            apply_overrides(load_preset(model), list(overrides))
        parts = {name: file for name, file in (("adapter", adapter), ("unet", unet)) if file is not None}
        pipe = cls.from_config(cfg, ckpt, device, dtype, offload, encoder, parts)
        for entry in lora:
            pipe.add_lora(*(entry if isinstance(entry, tuple) else (entry,)))
        return pipe

    @classmethod
    def from_config(cls, cfg: Config, ckpt: str | os.PathLike | None = None, device: str = "auto",
                    dtype: str = "auto", offload: bool = False, encoder: bool = False,
                    parts: Mapping[str, str | os.PathLike] = {}) -> "TextToVideo":
        """`parts`: components' own files by component name (`adapter`, `unet`), over the config's. A preset made of a
        LoRA (`cfg.lora`) has it merged for good."""
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        path = Path(ckpt) if ckpt is not None else find_checkpoint(cfg)
        files = find_parts(cfg, {name: Path(file) for name, file in parts.items()})
        lora = find_merged_lora(cfg)
        state = load_state_dict(path)
        cfg = _with_parts_found(cfg, state, files)
        own = {name: (load_state_dict(file), str(file)) for name, file in files.items()}
        try:
            models = load_models(cfg.model, state, str(path), torch.device("cpu") if offload else dev, dt, encoder,
                                 own)
        except VcraftError as exc:
            match = identify_preset(state)
            if match is None or match == cfg.name:
                raise
            raise VcraftError(f"{exc}; the file is a '{match}' checkpoint: use --model {match}") from None
        if lora is not None:
            Merged(models, cfg.model).add(read_lora(lora), keep=False)
        return cls(cfg, models, dev, dt, offload)

    def compile(self, **options: Any) -> "TextToVideo":
        """Compile the UNet with torch.compile (in place; returns self; `options` go to torch.compile, e.g.
        mode="max-autotune"). The first step at each new shape then compiles for a minute or more, and every
        later step runs faster (docs/benchmarks.md). Off unless asked for: short runs would spend more time
        compiling than they save."""
        self.unet.compile(**options)
        return self

    def add_lora(self, lora: str | os.PathLike | LoRA, scale: float = 1.0, removable: bool = True) -> "TextToVideo":
        """Merge a LoRA (a file, an official LoRA's name, or a read `LoRA`) into the weights at `scale` (in place;
        returns self). Its trigger words, if any, go into the prompt as they are: a prompt is used as written.
        `removable=False` saves the memory of the weights it replaces, which `clear_loras` would need."""
        self.merged.add(lora if isinstance(lora, LoRA) else open_lora(lora), scale, keep=removable)
        return self

    def clear_loras(self) -> "TextToVideo":
        """Remove every merged LoRA: the weights are again exactly those loaded."""
        self.merged.clear()
        return self

    def settings(self, prompt: str, **chosen: Any) -> Settings:
        """Checked settings of one video for this model: `chosen` (seed, negative, frames, height, width, sampler,
        steps, guidance, guidance_min_t, eta, fps, save_fps, overlap, extend; motion_guidance for vc2-turbo-v2;
        `image` for image-to-video models: a path, a PIL image or an RGB array; `continues`: a video to extend by
        `frames` new frames, a path or a uint8 array, which needs the encoder) over the config's defaults."""
        return make_settings(self.config, prompt, **chosen)

    def __call__(self, prompt: str | Settings, callback: Optional[Progress] = None, **chosen: Any) -> np.ndarray:
        """One video as uint8 `[T, H, W, 3]`, from `Settings` or a prompt and settings (see `settings`)."""
        return np.concatenate(list(self.stream(prompt, callback, **chosen)))

    def stream(self, prompt: str | Settings, callback: Optional[Progress] = None, **chosen: Any
               ) -> Iterator[np.ndarray]:
        """One video's uint8 frames `[n, H, W, 3]`, chunk by chunk and window by window, so that memory does
        not grow with its length (a continued video's own frames first). `callback(step, total)` counts the
        denoising steps of all windows."""
        s = self._checked(prompt, chosen)
        if s.continues is not None:
            yield s.continues.frames
        for window in self.latents(s, callback):
            for chunk in self.decode(window):
                yield chunk[0].numpy()

    def _checked(self, prompt: str | Settings, chosen: dict[str, Any]) -> Settings:
        if not isinstance(prompt, Settings):
            return self.settings(prompt, **chosen)
        if chosen:
            raise VcraftError(f"give Settings or settings by name, not both (got {', '.join(chosen)})")
        return prompt

    @torch.inference_mode()
    def latents(self, s: Settings, callback: Optional[Progress] = None, uncond_sees_given: bool = True
                ) -> Iterator[torch.Tensor]:
        """The latents of one video, yielded window by window as its new frames `[1, c, n, h, w]`. Past the
        model's clip, each window continues the last `s.overlap` frames of the one before (the first window
        too, from the given video's, when `s.continues`): its given frames. All its noise comes from one CPU
        generator seeded with `s.seed`: each window's starting noise, then (eta > 0) one draw a step.
        `uncond_sees_given=False` hides the given frames from guidance's unconditional pass (see Conditioning).
        With prompts along the video, each window takes the one of its new frames; with `--extend freenoise` past the
        clip, the whole video comes as one block (`freenoise_latents`)."""
        contexts = self.encode_prompts(list(s.prompts or [s.prompt])).to(self.dtype)[:, None]  # [prompt, 1, n, d]
        model = self.config.model
        scales = self.scales(s)
        uncond = self.encode_prompts([s.negative]).to(self.dtype) if s.guidance != 1.0 and not scales else None
        image, uncond_image = self.encode_picture(s) if self.image_encoder is not None else (None, None)
        fps = torch.full((1,), s.fps, device=self.device, dtype=torch.long)
        clip = model.unet.temporal_length
        if made_at_once(s, model):
            yield self.freenoise_latents(s, Conditioning(contexts[0], uncond, fps, image=image,
                                                         uncond_image=uncond_image, **scales), contexts, callback)
            return
        f = self.autoencoder.downsample
        first = 0 if s.continues is None else s.overlap  # given latent frames of the first window
        shape = (1, model.autoencoder.embed_dim, min(first + s.frames, clip), s.height // f, s.width // f)
        noise = partial(self._noise, torch.Generator("cpu").manual_seed(s.seed), shape)
        windows = self.window_count(s)
        prompt_of = window_prompts(s.at, s.frames, clip, s.overlap, s.continues is not None) if s.prompts else \
            [0] * windows
        sample = sampler(s.sampler)
        steps = step_count(s.sampler, s.steps, self.schedule)
        made = 0
        given = None if s.continues is None else self.encode_frames(s.continues.frames[-s.overlap:])
        maps = self.control_maps(s)
        for window in range(windows):
            x = noise()
            # The window's frames in the video: those it is given from the last window, then its new ones (frames
            # past the video's end, which are dropped, take the last control frame).
            start = 0 if window == 0 else made - s.overlap
            positions = [min(start + i, s.frames - 1) for i in range(shape[2])]
            cond = Conditioning(contexts[prompt_of[window]], uncond, fps, given=given, extend=s.extend,
                                uncond_sees_given=uncond_sees_given, image=image, uncond_image=uncond_image,
                                control=None if maps is None else self.control_features(maps[:, :, positions]),
                                **scales)
            denoiser = self.denoiser(cond, s.guidance, s.guidance_min_t)
            # Given frames noised with the window's own starting noise there: DDIM's deterministic path from it
            # ends at them, and it shares the window's frame-common draw (frame_noise_share).
            replace = None if given is None or s.extend != "replace" else \
                replace_given(given, x[:, :, :given.shape[2]].clone(), self.schedule)
            with self._on_device(self.unet):
                out = sample(denoiser, x, self.schedule, s.steps, s.eta, noise,
                             _offset(callback, window * steps, windows * steps), replace)
            if not out.isfinite().all():
                raise FloatingPointError("the sampler produced NaN or infinite latents (try --dtype fp32)")
            if given is not None:  # exactly the given latents, which the sampler only approaches
                out[:, :, :given.shape[2]] = given
            new = (out if given is None else out[:, :, s.overlap:])[:, :, :s.frames - made]
            made += new.shape[2]
            given = out[:, :, -s.overlap:]  # the next window's
            yield new

    def freenoise_latents(self, s: Settings, cond: Conditioning, contexts: torch.Tensor,
                          callback: Optional[Progress] = None) -> torch.Tensor:
        """The latents of a whole video made at once, FreeNoise's way (sampling/freenoise.py), from its first
        prompt's `cond` (and the prompts' `contexts` `[p, 1, n, d]` for a schedule): noise rescheduled from one
        generator seeded with `s.seed` (then, eta > 0, one draw a step), the temporal attention fused over windows.
        A frame count the windows do not tile is made up to the next that they do, and cut."""
        check_fits(self.config.model, s, self.device, self.dtype)
        window, stride = s.window, s.window_stride
        total = tiled_frames(s.frames, window, stride)
        f = self.autoencoder.downsample
        shape = (1, self.config.model.autoencoder.embed_dim, total, s.height // f, s.width // f)
        generator = torch.Generator("cpu").manual_seed(s.seed)
        x = reschedule(draw_noise(self.schedule, generator, shape), window, stride, s.seed).to(self.device, self.dtype)
        if s.prompts:
            cond = replace(cond, context=frame_contexts(contexts[:, 0], s.at, total),
                           early=contexts[-1][:, None].expand(-1, total, -1, -1),
                           early_at=injection_steps(model_timesteps(s.sampler, s.steps, self.schedule)))
        steps = step_count(s.sampler, s.steps, self.schedule)
        with self._on_device(self.unet), fused_windows(self.unet, windows(total, window, stride)):
            out = sampler(s.sampler)(self.denoiser(cond, s.guidance, s.guidance_min_t), x, self.schedule, s.steps,
                                     s.eta, partial(self._noise, generator, shape), _offset(callback, 0, steps))
        if not out.isfinite().all():
            raise FloatingPointError("the sampler produced NaN or infinite latents (try --dtype fp32)")
        return out[:, :, :s.frames]

    def scales(self, s: Settings) -> dict[str, Any]:
        """The scales a UNet with a guidance embedding takes as inputs (Conditioning's fields); {} for other UNets."""
        if not self.config.model.unet.guidance_embedding:
            return {}
        motion_min_t = math.ceil(self.schedule.timesteps * (1 - MOTION_SHARE))
        return {"guidance_scale": s.guidance, "motion_scale": s.motion_guidance, "motion_min_t": motion_min_t}

    def window_count(self, s: Settings) -> int:
        """How many windows (clips of the model) make the video of `s`: FreeNoise's whole video counts as one."""
        if made_at_once(s, self.config.model):
            return 1
        return window_count(s.frames, self.config.model.unet.temporal_length, s.overlap, s.continues is not None)

    def denoiser(self, cond: Conditioning, guidance: float, guidance_min_t: int = 0) -> Denoiser:
        """This model's UNet as `eps = denoiser(x, t)` under `cond`, guided at timesteps >= `guidance_min_t`."""
        model = self.config.model
        v_prediction = self.schedule.alphas_cumprod if model.parameterization == "v" else None
        return Denoiser(self.unet, cond, guidance, guidance_min_t, model.frame_conditioning, v_prediction)

    def _noise(self, generator: torch.Generator, shape: tuple[int, ...]) -> torch.Tensor:
        return draw_noise(self.schedule, generator, shape).to(self.device, self.dtype)

    @torch.inference_mode()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Text embeddings `[len(prompts), tokens, dim]` on the device. One prompt at a time: a batched
        matrix product may round a row differently from the same row alone."""
        with self._on_device(self.text_encoder):
            encoded = {p: self.text_encoder.encode([p]) for p in dict.fromkeys(prompts)}
        return torch.cat([encoded[p] for p in prompts]).to(self.device)

    @torch.inference_mode()
    def encode_frames(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 frames `[T, H, W, 3]` as latents `[1, c, T, h, w]` (the posterior's mean): needs the autoencoder's
        encoder, which only `from_pretrained(..., encoder=True)` loads."""
        if self.autoencoder.encoder is None:
            raise VcraftError("continuing a video needs the autoencoder's encoder: load the model with encoder=True")
        with self._on_device(self.autoencoder):
            return self.autoencoder.encode(frames_tensor(frames).to(self.device, self.dtype))

    @torch.inference_mode()
    def control_maps(self, s: Settings) -> Optional[torch.Tensor]:
        """The control maps `[1, 1, frames, H, W]` in [-1, 1] that `s` gives (None without a control video): the
        frames its stride picks, scaled to the video's size, each frame's depth (estimated, or given as grey frames)
        or, for a brightness adapter, its brightness, normalised on its own."""
        footage = s.control_depth or s.control_video
        if footage is None:
            return None
        if self.adapter is None:
            raise VcraftError(f"the control adapter of model '{self.config.name}' is not on this machine")
        frames = scaled_frames(footage, s.height, s.width)
        video = video_tensor(frames[control_indices(len(frames), s.frames, s.control_stride)])
        if s.control_depth is not None:
            return grey(video).to(self.device, self.dtype)
        if self.config.model.adapter.signal == "brightness":
            return brightness(video).to(self.device, self.dtype)
        with self._on_device(self.depth_estimator):
            depth = depth_maps(self.depth_estimator, video.to(self.device, self.dtype), (s.height, s.width))
        return normalise_frames(depth)

    @torch.inference_mode()
    def control_features(self, maps: torch.Tensor) -> list[torch.Tensor]:
        """The control adapter's features of a window's maps `[1, 1, t, H, W]`, one per UNet level."""
        with self._on_device(self.adapter):
            return self.adapter(maps)

    @torch.inference_mode()
    def encode_picture(self, s: Settings) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The image tokens of `s.image` at the video's size, and (with guidance) those of the unconditional pass."""
        picture = picture_tensor(s.image, s.height, s.width).to(self.device, self.dtype)
        encoder, projector = self.image_encoder, self.image_projector
        with self._on_device(encoder, projector):
            uncond = projector(encoder(encoder.blank(1))) if s.guidance != 1.0 else None
            return projector(encoder(picture)), uncond

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor, chunk: int | None = None) -> Iterator[torch.Tensor]:
        """Yield uint8 frames `[b, n, H, W, 3]` on the CPU, a few at a time (see decode_chunks)."""
        with self._on_device(self.autoencoder):
            for part in self.autoencoder.decode_chunks(latents, chunk):
                yield frames_to_uint8(part).cpu()

    @contextmanager
    def _on_device(self, *modules: torch.nn.Module) -> Iterator[None]:
        """Offloading: `modules` on the device for the duration of the block, then back in CPU memory."""
        if not self.offload:
            yield
            return
        for module in modules:
            module.to(self.device)
        try:
            yield
        finally:
            for module in modules:
                module.to("cpu")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()  # give the freed weights back before the next stage arrives


def _with_parts_found(cfg: Config, state: dict[str, torch.Tensor], files: Mapping[str, Path]) -> Config:
    """`cfg` without the separate components whose weights neither a file nor the checkpoint holds: optional ones,
    such as the embedded model's bundled adapter (the model then makes videos without control). A part the config
    lists is never missing here: `find_parts` has found its file or said how to get it."""
    model = cfg.model
    for name, section in PART_COMPONENTS.items():
        prefix = BY_NAME[name].prefix
        if section and getattr(model, section) is not None and name not in files and \
                not any(k.startswith(prefix) for k in state):
            model = replace(model, **{section: None})
    return replace(cfg, model=model)


def _offset(callback: Optional[Progress], done: int, total: int) -> Optional[Callback]:
    """A sampler's callback reporting one window's steps as progress over the whole video."""
    return None if callback is None else lambda step: callback(done + step.index, total)
