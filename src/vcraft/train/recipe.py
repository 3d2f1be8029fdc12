"""The whole recipe in one run folder: fresh models, the stages in order, the exported model."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import torch
from omegaconf import OmegaConf

from vcraft.config import Config
from vcraft.errors import VcraftError
from vcraft.loaders.checkpoints import save_state_dict
from vcraft.loaders.components import BY_NAME, Models
from vcraft.loaders.loading import build_models
from vcraft.models.unet3d import zero_init_residuals
from vcraft.train.data import TurnClips, encode_dataset, make_dataset, make_turns, reversed_clips, train_config
from vcraft.train.loop import Log, load_state
from vcraft.train.stages import checkpoint_layout, pretrain_text_encoder, train_autoencoder, train_diffusion

VAE = BY_NAME["autoencoder"].prefix  # the autoencoder's keys in a run's files, as in the official layout


def initial_models(cfg: Config, device: str | torch.device = "cpu") -> Models:
    """Freshly initialised modules (drawn on the CPU: the same for the same config and seed), on `device`."""
    torch.manual_seed(train_config(cfg).seed)
    models = build_models(cfg.model, "cpu", encoder=True)
    zero_init_residuals(models.unet)
    for module in models.modules():
        module.to(device)
    return models


def train(cfg: Config, run: Path, log: Log = print, stop_after: int | None = None,
          device: str | torch.device = "cpu") -> Path | None:
    """Run (or resume) the whole recipe in folder `run`, on `device`. Returns the trained model's path, or
    None when `stop_after` steps of the current stage ended the call early."""
    tc = train_config(cfg)
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
            {k[len(VAE):]: v for k, v in stored.items() if k.startswith(VAE)})
    elif not train_autoencoder(models, videos, cfg, run, log, stop_after):
        return None
    else:
        t0 = time.perf_counter()
        raw = encode_dataset(models.autoencoder, videos)
        vae_state = {VAE + k: v.cpu() for k, v in models.autoencoder.state_dict().items()}
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
    if not (run / "diffusion.pt").is_file():  # else the text encoder is in the diffusion checkpoint
        pretrain_text_encoder(models, captions, scenes, cfg, run, log)
    turns = turn_clips(models, cfg, run, log) if tc.turns else None
    ema, done = train_diffusion(models, raw * scale, captions, cfg, run, log, stop_after, turns)
    if not done:
        return None
    return export(models, ema, cfg, run / "model.safetensors")


def turn_clips(models: Models, cfg: Config, run: Path, log: Log) -> TurnClips:
    """The clips that turn (drawn again each time, in seconds; encoded once into the run folder
    as `turns.safetensors`), scaled."""
    from safetensors.torch import load_file

    path = run / "turns.safetensors"
    videos, captions, given = make_turns(cfg)
    if path.is_file():
        raw = load_file(path)["latents"]
    else:
        t0 = time.perf_counter()
        raw = encode_dataset(models.autoencoder, videos)
        save_state_dict({"latents": raw}, path)
        log(f"encoded {len(videos)} clips that turn in {time.perf_counter() - t0:.0f} s")
    return TurnClips(raw * models.autoencoder.scale_factor, captions, given)


def export(models: Models, ema: dict[str, torch.Tensor], cfg: Config, path: Path, dtype: str = "fp16") -> Path:
    """The trained model in vcraft's checkpoint layout (official prefixes; autoencoder in diffusers' layout)."""
    state = {k: v.cpu() for k, v in ema.items()}
    state.update({VAE + k: v.cpu() for k, v in models.autoencoder.state_dict().items()})
    state["alphas_cumprod"] = models.schedule.alphas_cumprod
    save_state_dict(state, path, dtype, {"format": "vcraft", "preset": cfg.name})
    return path


def checkpoint_of_run(run: Path) -> dict[str, torch.Tensor]:
    """The EMA weights of a run's latest diffusion checkpoint, in checkpoint layout (to look at a run
    in progress; the run's config.yaml describes them)."""
    from safetensors.torch import load_file

    state = load_state(run / "diffusion.pt")
    if state is None:
        raise VcraftError(f"{run} has no diffusion checkpoint yet")
    vae = {k: v for k, v in load_file(run / "latents.safetensors").items() if k.startswith(VAE)}
    return {**checkpoint_layout(state["ema"]), **vae}
