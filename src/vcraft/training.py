"""Training a small model from scratch on the synthetic shapes data: autoencoder stage, then diffusion.

Everything lives in one run folder, and both stages can be stopped and resumed at any checkpoint:

    run/config.yaml                 the config, with the latent scale measured after the autoencoder stage
    run/autoencoder.pt              autoencoder stage: weights, optimiser, RNG state, step (while training)
    run/latents.safetensors         the whole data set encoded once, with the trained autoencoder
    run/diffusion.pt                diffusion stage: UNet, text encoder, their EMA, optimiser, RNG, step
    run/train.log                   one line per logged step: stage, step, loss, learning rate, speed
    run/model.safetensors           the result, EMA weights, loadable with --config run/config.yaml

All randomness comes from torch's global generator, seeded per stage and saved in every checkpoint,
so a resumed run continues bit for bit where it stopped.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from vcraft.checkpoints import TEXT_PREFIX, UNET_PREFIX, VAE_PREFIX, save_state_dict
from vcraft.config import Config, TrainConfig
from vcraft.data.shapes import COLOURS, COLOURS_INDEX, MOTIONS, SHAPES, TRAIN_SCENES, Scene, caption
from vcraft.data.shapes import sample as sample_clip
from vcraft.errors import VcraftError
from vcraft.loading import Models, build_models
from vcraft.models.autoencoder import VideoAutoencoder, diffusers_vae_config
from vcraft.models.text_encoder import tokenize
from vcraft.models.unet3d import with_given_frames, zero_init_residuals
from vcraft.sampling.schedule import frame_noise, q_sample, v_target

Log = Callable[[str], None]
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up", "growing": "shrinking",
            "shrinking": "growing"}


def make_dataset(cfg: Config) -> tuple[np.ndarray, list[str], list[Scene]]:
    """The training clips as uint8 `[n, T, H, W, 3]`, their captions and scenes; clip k is drawn from
    seed `train.seed * 10**6 + k`, so the set is the same on every machine."""
    s, tc = cfg.sampling, _train_config(cfg)
    videos = np.empty((tc.videos, s.frames, s.height, s.width, 3), dtype=np.uint8)
    captions, scenes = [], []
    for k in range(tc.videos):
        clip, text, scene = sample_clip(tc.seed * 10**6 + k, s.frames, s.height)
        videos[k] = np.round(clip * 255)
        captions.append(text)
        scenes.append(scene)
    return videos, captions, scenes


def reversed_clips(latents: torch.Tensor, scenes: list[Scene], seed: int
                   ) -> tuple[torch.Tensor, list[str], list[Scene]]:
    """Free extra data: a clip played backwards is exactly a clip of the opposite motion (the generator's
    positions, speeds and sizes are symmetric), and latents are per frame, so reversing them is exact.
    Clips whose reversed scene is held out are left out, so no held-out combination leaks in."""
    keep, captions, flipped = [], [], []
    for k, scene in enumerate(scenes):
        other = Scene(scene.colour, scene.shape, OPPOSITE[scene.motion])
        if other in TRAIN_SCENES:
            keep.append(k)
            captions.append(caption(other, np.random.default_rng([seed, k])))
            flipped.append(other)
    return latents[keep].flip(2), captions, flipped


def _train_config(cfg: Config) -> TrainConfig:
    if cfg.train is None:
        raise VcraftError(f"config '{cfg.name}' has no train section")
    if cfg.sampling.height != cfg.sampling.width:
        raise VcraftError("the shapes data is square: sampling.height must equal sampling.width")
    return cfg.train


def to_pixels(videos: np.ndarray) -> torch.Tensor:
    """uint8 `[n, T, H, W, 3]` -> float `[n, 3, T, H, W]` in [-1, 1]."""
    return torch.from_numpy(videos).permute(0, 4, 1, 2, 3).float() / 127.5 - 1


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))


def _save(state: dict, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load(path: Path) -> dict | None:
    return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None


class _Progress:
    """Logs to run/train.log (and stderr), and draws a bar on a terminal."""

    def __init__(self, run: Path, stage: str, total: int, start: int, log: Log):
        self.file = open(run / "train.log", "a")
        self.stage, self.log, self.losses, self.t0 = stage, log, [], time.perf_counter()
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc=stage, unit="step", file=sys.stderr)

    def step(self, step: int, loss: float, lr: float, every: int = 25) -> None:
        self.losses.append(loss)
        if self.bar is not None:
            self.bar.update(1)
        if (step + 1) % every == 0:
            per_step = (time.perf_counter() - self.t0) / len(self.losses)
            line = (f"{self.stage} step {step + 1} loss {np.mean(self.losses):.5f} lr {lr:.2e} "
                    f"{per_step:.2f} s/step")
            self.file.write(line + "\n")
            self.file.flush()
            if self.bar is None:
                self.log(line)
            self.losses, self.t0 = [], time.perf_counter()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.file.close()


def _optimiser(params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.AdamW:
    return torch.optim.AdamW(list(params), lr=lr, betas=(0.9, 0.99), weight_decay=weight_decay)


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> float:
    for group in opt.param_groups:
        group["lr"] = lr
    return lr


def _resume(path: Path, module: torch.nn.Module, opt: torch.optim.Optimizer, seed: int) -> tuple[int, dict]:
    """Seed the stage, then restore its last checkpoint if there is one: weights, optimiser, RNG.
    Returns the step to continue from and the checkpoint (empty without one)."""
    torch.manual_seed(seed)
    state = _load(path)
    if state is None:
        return 0, {}
    module.load_state_dict(state["model"])
    opt.load_state_dict(state["optimiser"])
    torch.set_rng_state(state["rng"])
    return int(state["step"]), state


def _loop(stage: str, run: Path, start: int, total: int, stop_after: int | None, checkpoint_every: int,
          step: Callable[[int], tuple[float, float]], save: Callable[[int], None], log: Log) -> bool:
    """Run steps `start`..`total - 1` (at most `stop_after` of them); `step(i)` returns (loss, lr) and
    `save(done)` writes a checkpoint, every `checkpoint_every` steps and at the end. True when complete."""
    end = total if stop_after is None else min(total, start + stop_after)
    progress = _Progress(run, stage, total, start, log)
    try:
        for i in range(start, end):
            loss, lr = step(i)
            progress.step(i, loss, lr)
            if (i + 1) % checkpoint_every == 0 or i + 1 == total:
                save(i + 1)
    finally:
        progress.close()
    return end == total


def train_autoencoder(models: Models, videos: np.ndarray, cfg: Config, run: Path, log: Log,
                      stop_after: int | None = None) -> bool:
    """Reconstruction (L1 + L2) plus a small KL term, on single frames. Returns True when the stage is done."""
    from diffusers import AutoencoderKL  # diffusers' for training: vcraft's decoder is for inference only

    tc = _train_config(cfg)
    ac = tc.autoencoder
    vae = AutoencoderKL(**diffusers_vae_config(cfg.model.autoencoder)).to(_device(models.autoencoder))
    vae.load_state_dict(models.autoencoder.state_dict())
    opt = _optimiser(vae.parameters(), ac.lr, 0.0)
    path = run / "autoencoder.pt"
    start, _ = _resume(path, vae, opt, tc.seed + 1)
    frames_per_clip = videos.shape[1]

    def step(i: int) -> tuple[float, float]:
        pick = torch.randint(len(videos) * frames_per_clip, (ac.batch_size,)).numpy()
        x = to_pixels(videos[pick // frames_per_clip, pick % frames_per_clip][:, None])[:, :, 0].to(_device(vae))
        lr = _set_lr(opt, lr_at(i, ac.steps, ac.lr, min(100, ac.steps // 10 + 1)))
        posterior = vae.encode(x).latent_dist
        # Decoded from a posterior sample, as a VAE is trained, with the noise drawn on the CPU as every random
        # number of a run is (the same run on every machine).
        noise = torch.randn(posterior.mean.shape).to(posterior.mean.device)
        recon = vae.decode(posterior.mean + posterior.std * noise).sample
        loss = F.l1_loss(recon, x) + F.mse_loss(recon, x) + ac.kl_weight * posterior.kl().mean()
        if ac.colour_anchor:
            # Left free, the encoder gave colours latents of very different sizes: a red object 0.5 latent std
            # from the background, a white one 17 (scripts/probe_latent_contrast.py), so the diffusion noise
            # hid red objects long before white ones and red prompts came out as scattered blobs. Tied to
            # the average colour, every object stands off the background by its pixel contrast.
            pooled = F.avg_pool2d(x, models.autoencoder.downsample)
            loss = loss + ac.colour_anchor * F.mse_loss(posterior.mean[:, :3], pooled)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item(), lr

    def save(done: int) -> None:
        _save({"model": vae.state_dict(), "optimiser": opt.state_dict(), "rng": torch.get_rng_state(),
               "step": done}, path)

    vae.train()
    complete = _loop("autoencoder", run, start, ac.steps, stop_after, tc.checkpoint_every, step, save, log)
    models.autoencoder.load_state_dict(vae.state_dict())
    return complete


@torch.inference_mode()
def encode_dataset(vae: VideoAutoencoder, videos: np.ndarray, batch: int = 8) -> torch.Tensor:
    """Posterior means of every clip, unscaled: `[n, c, T, h, w]`."""
    vae.to(memory_format=torch.channels_last)  # a quarter less time for these convolutions on CPUs
    parts = [vae.encode_moments(to_pixels(videos[i:i + batch]).to(_device(vae))).chunk(2, dim=1)[0].cpu()
             for i in range(0, len(videos), batch)]
    vae.to(memory_format=torch.contiguous_format)
    return torch.cat(parts).contiguous()


def draw_timesteps(total: int, n: int, exponent: float = 1.0) -> torch.Tensor:
    """n timesteps `floor(total * u**exponent)`, u uniform: exponent 1 is uniform, below 1 favours the
    noisy end. Uniform draws use randint, as before the exponent existed, so earlier runs still reproduce."""
    if exponent == 1:
        return torch.randint(total, (n,))
    return (total * torch.rand(n) ** exponent).long().clamp(max=total - 1)


def diffusion_loss(models: Models, cfg: Config, latents: torch.Tensor, tokens: torch.Tensor,
                   empty: torch.Tensor) -> torch.Tensor:
    """One batch's loss: caption dropout, random timesteps, given first frames for some clips,
    optional min-SNR weighting, error counted on the frames the model has to make."""
    dc = _train_config(cfg).diffusion
    b, _, frames = latents.shape[:3]
    dev = latents.device
    schedule = models.schedule
    # Random draws on the CPU generator, whatever the device: the same run on every machine.
    drop = torch.rand(b) < dc.caption_dropout
    tokens = torch.where(drop[:, None].to(dev), empty, tokens)
    t = draw_timesteps(schedule.timesteps, b, dc.timestep_exponent)
    shape = latents.shape
    noise = frame_noise(schedule, lambda n: torch.randn(*shape[:2], n, *shape[3:]), frames).to(dev)
    x_t = q_sample(schedule, latents, t.to(dev), noise)
    context = models.text_encoder(tokens)
    fps = torch.full((b,), cfg.sampling.fps, dtype=torch.long, device=dev)
    mask = torch.zeros(b, 1, frames, 1, 1, device=dev)
    if cfg.model.frame_conditioning:
        most = min(dc.max_given_frames, frames - 1)  # at least one frame is left to make
        given = torch.randint(1, most + 1, (b,)) * (torch.rand(b) < dc.given_frames_prob)
        mask = (torch.arange(frames)[None] < given[:, None]).float().view(b, 1, frames, 1, 1).to(dev)
        if dc.shift_given:
            shifts = torch.randint(latents.shape[-1], (b, 2)) * (given > 0)[:, None]
            latents, noise, x_t = (_roll(v, shifts) for v in (latents, noise, x_t))
        x_t = with_given_frames(x_t, latents, mask)
    out = models.unet(x_t, t.to(dev), context, fps)
    a = schedule.alphas_cumprod[t]
    snr = (a / (1 - a)).to(dev)
    v = cfg.model.parameterization == "v"
    target = v_target(schedule, latents, t.to(dev), noise) if v else noise
    # min-SNR-gamma in the target's units; None: plain MSE on the target. With v, plain MSE keeps real
    # weight on the noisiest steps, where the layout, colour and motion (what the prompt says) are decided;
    # min-SNR-5 gave them almost none with this schedule and the model ignored the caption.
    weight = torch.ones_like(snr) if dc.min_snr is None else snr.clamp(max=dc.min_snr) / (snr + 1 if v else snr)
    per_frame = ((out.float() - target) ** 2).mean(dim=(1, 3, 4))  # [b, frames]
    made = 1 - mask.view(b, frames)
    per_clip = (per_frame * made).sum(1) / made.sum(1)
    return (weight * per_clip).mean()


def _roll(clips: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Clip k rolled by `shifts[k]` (rows, columns) latent pixels, wrapping around."""
    return torch.stack([clip.roll((int(dy), int(dx)), dims=(-2, -1)) for clip, (dy, dx) in zip(clips, shifts)])


def pretrain_text_encoder(models: Models, tokens: torch.Tensor, scenes: list[Scene], cfg: Config, run: Path,
                          log: Log) -> None:
    """Teach the text encoder to tell captions apart before the diffusion stage, as VideoCrafter starts
    from a pretrained CLIP: linear heads on the last token's feature (the one the UNet adds to its
    timestep embedding) classify colour, shape and motion. Learnt from the diffusion loss alone, the
    words matter to the features too little for hundreds of steps. Takes seconds; the heads are dropped."""
    tc = _train_config(cfg)
    xc = tc.text
    encoder = models.text_encoder
    torch.manual_seed(tc.seed + 3)
    width = cfg.model.text_encoder.width
    heads = torch.nn.ModuleList(torch.nn.Linear(width, n) for n in (len(COLOURS), len(SHAPES), len(MOTIONS)))
    heads.to(_device(encoder))
    labels = torch.tensor([[COLOURS_INDEX[s.colour], SHAPES.index(s.shape), MOTIONS.index(s.motion)]
                           for s in scenes])
    opt = _optimiser([*encoder.parameters(), *heads.parameters()], xc.lr, 0.0)

    def step(i: int) -> tuple[float, float]:
        lr = _set_lr(opt, lr_at(i, xc.steps, xc.lr, xc.steps // 10 + 1))
        idx = torch.randint(len(tokens), (xc.batch_size,))
        pooled = encoder(tokens[idx].to(_device(encoder)))[:, -1]
        loss = sum(F.cross_entropy(head(pooled), labels[idx, j].to(pooled.device)) for j, head in enumerate(heads))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item(), lr

    encoder.train()
    _loop("text", run, 0, xc.steps, None, xc.steps + 1, step, lambda _: None, log)


def train_diffusion(models: Models, latents: torch.Tensor, tokens: torch.Tensor, cfg: Config, run: Path,
                    log: Log, stop_after: int | None = None) -> tuple[dict, bool]:
    """AdamW with warm-up and cosine decay, EMA of the weights. Returns the EMA state of the UNet and text
    encoder (keys with their checkpoint prefixes) and whether the stage is done."""
    tc = _train_config(cfg)
    dc = tc.diffusion
    nets = torch.nn.ModuleDict({"unet": models.unet, "text": models.text_encoder})
    # The text encoder stays as its own stage left it, as VideoCrafter keeps CLIP frozen: trained along
    # with the UNet, its captions' features collapsed (|red - blue| 0.87 -> 0.05 in 1,500 steps).
    models.text_encoder.requires_grad_(False)
    params = [p for p in nets.parameters() if p.requires_grad]
    opt = _optimiser(params, dc.lr, dc.weight_decay)
    path = run / "diffusion.pt"
    start, state = _resume(path, nets, opt, tc.seed + 2)
    dev = _device(nets)
    ema = {k: v.detach().clone().to(dev) for k, v in (state.get("ema") or nets.state_dict()).items()}
    empty = tokenize([""], cfg.model.text_encoder.context_length).to(dev)

    def step(i: int) -> tuple[float, float]:
        lr = _set_lr(opt, lr_at(i, dc.steps, dc.lr, dc.warmup))
        idx = torch.randint(len(latents), (dc.batch_size,))
        loss = diffusion_loss(models, cfg, latents[idx].to(dev), tokens[idx].to(dev), empty)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            for k, v in nets.state_dict().items():
                if v.is_floating_point():
                    ema[k].lerp_(v, 1 - dc.ema)
                else:
                    ema[k].copy_(v)
        return loss.item(), lr

    def save(done: int) -> None:
        _save({"model": nets.state_dict(), "ema": ema, "optimiser": opt.state_dict(),
               "rng": torch.get_rng_state(), "step": done}, path)

    nets.train()
    complete = _loop("diffusion", run, start, dc.steps, stop_after, tc.checkpoint_every, step, save, log)
    nets.eval()
    return _checkpoint_layout(ema), complete


def _checkpoint_layout(nets_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`unet.*` / `text.*` keys of the training modules -> the checkpoint's prefixes."""
    return {(UNET_PREFIX + k[len("unet."):]) if k.startswith("unet.") else TEXT_PREFIX + k[len("text."):]: v
            for k, v in nets_state.items()}


def checkpoint_of_run(run: Path) -> dict[str, torch.Tensor]:
    """The EMA weights of a run's latest diffusion checkpoint, in checkpoint layout (to look at a run
    in progress; the run's config.yaml describes them)."""
    from safetensors.torch import load_file

    state = _load(run / "diffusion.pt")
    if state is None:
        raise VcraftError(f"{run} has no diffusion checkpoint yet")
    vae = {k: v for k, v in load_file(run / "latents.safetensors").items() if k.startswith(VAE_PREFIX)}
    return {**_checkpoint_layout(state["ema"]), **vae}


def initial_models(cfg: Config, device: str | torch.device = "cpu") -> Models:
    """Freshly initialised modules (drawn on the CPU: the same for the same config and seed), on `device`."""
    torch.manual_seed(_train_config(cfg).seed)
    models = build_models(cfg.model, "cpu", encoder=True)
    zero_init_residuals(models.unet)
    torch.nn.init.constant_(models.text_encoder.model.logit_scale, math.log(1 / 0.07))  # unused, kept defined
    for module in (models.text_encoder, models.unet, models.autoencoder):
        module.to(device)
    return models


def _device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def train(cfg: Config, run: Path, log: Log = print, stop_after: int | None = None,
          device: str | torch.device = "cpu") -> Path | None:
    """Run (or resume) the whole recipe in folder `run`, on `device`. Returns the trained model's path, or
    None when `stop_after` steps of the current stage ended the call early."""
    tc = _train_config(cfg)
    run.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    videos, captions, scenes = make_dataset(cfg)
    log(f"data: {len(videos)} clips of {videos.shape[1]}x{videos.shape[2]}x{videos.shape[3]} "
        f"in {time.perf_counter() - t0:.0f} s")
    models = initial_models(cfg, device)
    latents_path = run / "latents.safetensors"
    from safetensors.torch import load_file

    if latents_path.is_file():
        stored = load_file(latents_path)
        models.autoencoder.load_state_dict(
            {k[len(VAE_PREFIX):]: v for k, v in stored.items() if k.startswith(VAE_PREFIX)})
    elif not train_autoencoder(models, videos, cfg, run, log, stop_after):
        return None
    else:
        t0 = time.perf_counter()
        raw = encode_dataset(models.autoencoder, videos)
        vae_state = {VAE_PREFIX + k: v.cpu() for k, v in models.autoencoder.state_dict().items()}
        save_state_dict({"latents": raw, **vae_state}, latents_path)
        stored = {"latents": raw}
        log(f"encoded the data set in {time.perf_counter() - t0:.0f} s")
    raw = stored["latents"]
    back, back_captions, back_scenes = reversed_clips(raw, scenes, tc.seed)
    raw, captions, scenes = torch.cat([raw, back]), captions + back_captions, scenes + back_scenes
    scale = float(1 / raw.std())
    cfg = replace(cfg, model=replace(cfg.model, scale_factor=scale))
    models.autoencoder.scale_factor = scale
    (run / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    tokens = tokenize(captions, cfg.model.text_encoder.context_length)
    if not (run / "diffusion.pt").is_file():  # else the text encoder is in the diffusion checkpoint
        pretrain_text_encoder(models, tokens, scenes, cfg, run, log)
    ema, done = train_diffusion(models, raw * scale, tokens, cfg, run, log, stop_after)
    if not done:
        return None
    return export(models, ema, cfg, run / "model.safetensors")


def export(models: Models, ema: dict[str, torch.Tensor], cfg: Config, path: Path, dtype: str = "fp16") -> Path:
    """The trained model in vcraft's checkpoint layout (official prefixes; autoencoder in diffusers' layout)."""
    state = {k: v.cpu() for k, v in ema.items()}
    state.update({VAE_PREFIX + k: v.cpu() for k, v in models.autoencoder.state_dict().items()})
    state["alphas_cumprod"] = models.schedule.alphas_cumprod
    save_state_dict(state, path, dtype, {"format": "vcraft", "preset": cfg.name})
    return path
