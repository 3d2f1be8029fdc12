"""The stages of the recipe: autoencoder, text encoder, diffusion (with its loss and its phases)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from vcraft.config import Config, DiffusionTraining, ModelConfig
from vcraft.data.shapes import COLOURS, COLOURS_INDEX, MOTIONS, SHAPES, Scene
from vcraft.errors import VcraftError
from vcraft.loaders.checkpoints import load_state_dict
from vcraft.loaders.components import Models, official_layout
from vcraft.loaders.loading import load_models
from vcraft.models.autoencoder import diffusers_vae_config
from vcraft.sampling.conditioning import Conditioning
from vcraft.sampling.denoisers import unet_inputs
from vcraft.sampling.schedule import frame_noise, q_sample, v_target
from vcraft.train.data import TurnClips, to_pixels, train_config, with_turns
from vcraft.train.loop import Log, device_of, lr_at, optimiser, resume, run_steps, save_state, set_lr

Phases = list[tuple[int, DiffusionTraining]]


def train_autoencoder(models: Models, videos: np.ndarray, cfg: Config, run: Path, log: Log,
                      stop_after: int | None = None) -> bool:
    """Reconstruction (L1 + L2) plus a small KL term, on single frames. Returns True when the stage is done."""
    from diffusers import AutoencoderKL  # diffusers' for training: vcraft's decoder is for inference only

    tc = train_config(cfg)
    ac = tc.autoencoder
    vae = AutoencoderKL(**diffusers_vae_config(cfg.model.autoencoder)).to(device_of(models.autoencoder))
    vae.load_state_dict(models.autoencoder.state_dict())
    opt = optimiser(vae.parameters(), ac.lr, 0.0)
    path = run / "autoencoder.pt"
    start, _ = resume(path, vae, opt, tc.seed + 1)
    frames_per_clip = videos.shape[1]

    def step(i: int) -> tuple[float, float]:
        pick = torch.randint(len(videos) * frames_per_clip, (ac.batch_size,)).numpy()
        x = to_pixels(videos[pick // frames_per_clip, pick % frames_per_clip][:, None])[:, :, 0].to(device_of(vae))
        lr = set_lr(opt, lr_at(i, ac.steps, ac.lr, min(100, ac.steps // 10 + 1)))
        posterior = vae.encode(x).latent_dist
        # Decoded from a posterior sample, as a VAE is trained, with the noise drawn on the CPU as every random
        # number of a run is (the same run on every machine).
        noise = torch.randn(posterior.mean.shape).to(posterior.mean.device)
        recon = vae.decode(posterior.mean + posterior.std * noise).sample
        loss = F.l1_loss(recon, x) + F.mse_loss(recon, x) + ac.kl_weight * posterior.kl().mean()
        if ac.colour_anchor:
            # Left free, the encoder gave colours latents of very different sizes (docs/embedded-model.md;
            # scripts/research/probe_latent_contrast.py), so the diffusion noise hid red objects long before
            # white ones and red prompts came out as scattered blobs. Tied to the average colour, every object
            # stands off the background by its pixel contrast.
            pooled = F.avg_pool2d(x, models.autoencoder.downsample)
            loss = loss + ac.colour_anchor * F.mse_loss(posterior.mean[:, :3], pooled)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item(), lr

    def save(done: int) -> None:
        save_state({"model": vae.state_dict(), "optimiser": opt.state_dict(), "rng": torch.get_rng_state(),
                    "step": done}, path)

    vae.train()
    complete = run_steps("autoencoder", run, start, ac.steps, stop_after, tc.checkpoint_every, step, save, log)
    models.autoencoder.load_state_dict(vae.state_dict())
    return complete


def pretrain_text_encoder(models: Models, captions: list[str], scenes: list[Scene], cfg: Config, run: Path,
                          log: Log) -> None:
    """Teach the text encoder to tell captions apart before the diffusion stage, as VideoCrafter starts
    from a pretrained CLIP: linear heads on the last token's feature (the one the UNet adds to its
    timestep embedding) classify colour, shape and motion. Learnt from the diffusion loss alone, the
    words matter to the features too little for hundreds of steps. Takes seconds; the heads are dropped."""
    tc = train_config(cfg)
    xc = tc.text
    encoder = models.text_encoder
    torch.manual_seed(tc.seed + 3)
    width = cfg.model.text_encoder.width
    heads = torch.nn.ModuleList(torch.nn.Linear(width, n) for n in (len(COLOURS), len(SHAPES), len(MOTIONS)))
    heads.to(device_of(encoder))
    labels = torch.tensor([[COLOURS_INDEX[s.colour], SHAPES.index(s.shape), MOTIONS.index(s.motion)]
                           for s in scenes])
    opt = optimiser([*encoder.parameters(), *heads.parameters()], xc.lr, 0.0)

    def step(i: int) -> tuple[float, float]:
        lr = set_lr(opt, lr_at(i, xc.steps, xc.lr, xc.steps // 10 + 1))
        idx = torch.randint(len(captions), (xc.batch_size,))
        pooled = encoder.encode([captions[i] for i in idx.tolist()])[:, -1]
        loss = sum(F.cross_entropy(head(pooled), labels[idx, j].to(pooled.device)) for j, head in enumerate(heads))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item(), lr

    encoder.train()
    run_steps("text", run, 0, xc.steps, None, xc.steps + 1, step, lambda _: None, log)


def frozen_config(cfg: Config) -> ModelConfig:
    """The model config without the components that come in files of their own (a control adapter, a depth
    estimator): what a checkpoint holds."""
    return replace(cfg.model, adapter=None, depth=None)


def frozen_model(cfg: Config, ckpt: Path, device: torch.device) -> Models:
    """The trained model of `ckpt`, frozen (the LoRA and control adapter stages train beside it), with the encoder."""
    return load_models(frozen_config(cfg), load_state_dict(ckpt), str(ckpt), device, encoder=True)


def draw_timesteps(total: int, n: int, exponent: float = 1.0) -> torch.Tensor:
    """n timesteps `floor(total * u**exponent)`, u uniform: exponent 1 is uniform, below 1 favours the
    noisy end. Uniform draws use randint, as before the exponent existed, so earlier runs still reproduce."""
    if exponent == 1:
        return torch.randint(total, (n,))
    return (total * torch.rand(n) ** exponent).long().clamp(max=total - 1)


def diffusion_loss(models: Models, cfg: Config, latents: torch.Tensor, captions: list[str],
                   settings: DiffusionTraining | None = None,
                   control: Optional[list[torch.Tensor]] = None,
                   given_exactly: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One batch's loss: caption dropout, random timesteps, given first frames for some clips,
    optional min-SNR weighting, error counted on the frames the model has to make. The UNet's inputs are built
    from a `Conditioning` as sampling builds them (denoisers.unet_inputs). `settings`: those of the current phase
    (default: the config's train.diffusion); `control`: a control adapter's features of the clips;
    `given_exactly`: per clip, a number of first frames given instead of the drawn one where above 0 (clips that
    turn)."""
    dc = settings if settings is not None else train_config(cfg).diffusion
    b, _, frames = latents.shape[:3]
    dev = latents.device
    schedule = models.schedule
    # Random draws on the CPU generator, whatever the device: the same run on every machine.
    drop = torch.rand(b) < dc.caption_dropout
    captions = ["" if dropped else caption for caption, dropped in zip(captions, drop.tolist())]
    t = draw_timesteps(schedule.timesteps, b, dc.timestep_exponent)
    shape = latents.shape
    noise = frame_noise(schedule, lambda n: torch.randn(*shape[:2], n, *shape[3:]), frames).to(dev)
    x_t = q_sample(schedule, latents, t.to(dev), noise)
    fps = torch.full((b,), cfg.sampling.fps, dtype=torch.long, device=dev)
    given = torch.zeros(b, dtype=torch.long)  # first frames given to each clip
    if cfg.model.frame_conditioning:
        most = min(dc.max_given_frames, frames - 1)  # at least one frame is left to make
        given = torch.randint(1, most + 1, (b,)) * (torch.rand(b) < dc.given_frames_prob)
        if given_exactly is not None:
            given = torch.where(given_exactly > 0, given_exactly, given)
        if dc.shift_given:
            shifts = torch.randint(latents.shape[-1], (b, 2)) * (given > 0)[:, None]
            latents, noise, x_t = (_roll(v, shifts) for v in (latents, noise, x_t))
    cond = Conditioning(models.text_encoder.encode(captions), None, fps, given=latents, given_count=given,
                        control=control)
    out = models.unet(**unet_inputs(x_t, t.to(dev), cond, cfg.model.frame_conditioning, guided=False))
    a = schedule.alphas_cumprod[t]
    snr = (a / (1 - a)).to(dev)
    v = cfg.model.parameterization == "v"
    target = v_target(schedule, latents, t.to(dev), noise) if v else noise
    # min-SNR-gamma in the target's units; None: plain MSE on the target. With v, plain MSE keeps real
    # weight on the noisiest steps, where the layout, colour and motion (what the prompt says) are decided;
    # min-SNR-5 gave them almost none with this schedule and the model ignored the caption.
    weight = torch.ones_like(snr) if dc.min_snr is None else snr.clamp(max=dc.min_snr) / (snr + 1 if v else snr)
    per_frame = ((out.float() - target) ** 2).mean(dim=(1, 3, 4))  # [b, frames]
    made = (torch.arange(frames)[None] >= given[:, None]).float().to(dev)
    per_clip = (per_frame * made).sum(1) / made.sum(1)
    return (weight * per_clip).mean()


def _roll(clips: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Clip k rolled by `shifts[k]` (rows, columns) latent pixels, wrapping around."""
    return torch.stack([clip.roll((int(dy), int(dx)), dims=(-2, -1)) for clip, (dy, dx) in zip(clips, shifts)])


def phase_of(step: int, phases: Phases) -> tuple[int, DiffusionTraining]:
    """`(until, settings)` of the phase that diffusion step `step` (counted from 0) belongs to."""
    return next(phase for phase in phases if step < phase[0])


def diffusion_lr(step: int, phases: Phases) -> float:
    """The learning rate of a diffusion step: its phase's warm-up and cosine, ending where the phase ends."""
    until, settings = phase_of(step, phases)
    return lr_at(step, until, settings.lr, settings.warmup)


def _phase_lines(dc: DiffusionTraining) -> list[tuple[int, str]]:
    lines, begin = [], 0
    for k, phase in enumerate(dc.phases):
        until = phase["until"]
        changes = ", ".join(f"{key}={value}" for key, value in phase.items() if key != "until") or "as configured"
        lines.append((until, f"diffusion phase {k + 1} of {len(dc.phases)}, steps {begin}-{until}: {changes}"))
        begin = until
    return lines


def train_diffusion(models: Models, latents: torch.Tensor, captions: list[str], cfg: Config, run: Path,
                    log: Log, stop_after: int | None = None, turns: TurnClips | None = None) -> tuple[dict, bool]:
    """AdamW with warm-up and cosine decay per phase, EMA of the weights; `turns`: the clips that phases with a
    `turn_prob` mix in. Returns the EMA state of the UNet and text encoder (keys with their checkpoint prefixes;
    once done, blended with the EMA of `blend_step` where that is set) and whether the stage is done."""
    tc = train_config(cfg)
    dc = tc.diffusion
    phases = dc.resolved_phases()
    nets = torch.nn.ModuleDict({net: getattr(models, name) for net, name in TRAINED.items()})
    # The text encoder stays as its own stage left it, as VideoCrafter keeps CLIP frozen: trained along
    # with the UNet, its captions' features collapsed (docs/embedded-model.md).
    models.text_encoder.requires_grad_(False)
    params = [p for p in nets.parameters() if p.requires_grad]
    opt = optimiser(params, dc.lr, dc.weight_decay)
    path = run / "diffusion.pt"
    start, state = resume(path, nets, opt, tc.seed + 2)
    dev = device_of(nets)
    ema = {k: v.detach().clone().to(dev) for k, v in (state.get("ema") or nets.state_dict()).items()}
    kept = {k: v.to(dev) for k, v in (state.get("kept") or {}).items()}  # the EMA at blend_step, once passed
    if dc.blend_step is not None and start > dc.blend_step and not kept:
        raise VcraftError(f"{path} is past step {dc.blend_step} without the weights of that step, which "
                          "train.diffusion.blend_step blends in: train in a new run folder, or set it to null")

    def step(i: int) -> tuple[float, float]:
        if i == dc.blend_step:
            kept.update({k: v.clone() for k, v in ema.items()})
        _, settings = phase_of(i, phases)
        lr = set_lr(opt, diffusion_lr(i, phases))
        for group in opt.param_groups:
            group["weight_decay"] = settings.weight_decay
        idx = torch.randint(len(latents), (settings.batch_size,))
        batch, texts, exactly = latents[idx], [captions[i] for i in idx.tolist()], None
        if settings.turn_prob:
            batch, texts, exactly = with_turns(batch, texts, turns, settings.turn_prob)
        loss = diffusion_loss(models, cfg, batch.to(dev), texts, settings, given_exactly=exactly)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            for k, v in nets.state_dict().items():
                if v.is_floating_point():
                    ema[k].lerp_(v, 1 - settings.ema)
                else:
                    ema[k].copy_(v)
        return loss.item(), lr

    def save(done: int) -> None:
        save_state({"model": nets.state_dict(), "ema": ema, "kept": kept, "optimiser": opt.state_dict(),
                    "rng": torch.get_rng_state(), "step": done}, path)

    nets.train()
    total = phases[-1][0]
    complete = run_steps("diffusion", run, start, total, stop_after, tc.checkpoint_every, step, save, log,
                         _phase_lines(dc))
    nets.eval()
    if complete and kept:
        ema = {k: torch.lerp(kept[k], v, 1 - dc.blend_share) if v.is_floating_point() else v for k, v in ema.items()}
    return checkpoint_layout(ema), complete


TRAINED = {"unet": "unet", "text": "text_encoder"}  # the training modules' names (in checkpoints) -> components


def checkpoint_layout(nets_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`unet.*` / `text.*` keys of the training modules -> the official layout."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in nets_state.items():
        net, rest = key.split(".", 1)
        parts.setdefault(TRAINED[net], {})[rest] = value
    return official_layout(parts)
