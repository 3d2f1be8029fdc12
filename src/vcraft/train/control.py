"""The embedded model's control adapter: trained on (control video, clip) pairs of paths that motion words do not
say (data/paths.py), with the model itself frozen, as T2I-Adapters are trained. The control signal is each frame's
brightness, so any video can drive it.

    run/control_data.safetensors   the pairs' control videos and the clips' latents, made once
    run/adapter.pt                 weights, optimiser, RNG state, step (while training)
    run/adapter.safetensors        the result (fp16), which the preset finds as checkpoints/<preset>/adapter.safetensors
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from vcraft.config import Config
from vcraft.data.paths import pair
from vcraft.errors import VcraftError
from vcraft.loaders.checkpoints import save_state_dict
from vcraft.loaders.components import BY_NAME, BuildOptions
from vcraft.models.adapter import brightness
from vcraft.train.data import encode_dataset, to_pixels, train_config
from vcraft.train.loop import Log, lr_at, optimiser, resume, run_steps, save_state, set_lr
from vcraft.train.stages import diffusion_loss, frozen_model


def make_pairs(cfg: Config, count: int, first_seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Control videos and clips, uint8 `[n, T, H, W, 3]`, and the clips' captions; pair k from seed first_seed + k."""
    s = cfg.sampling
    controls = np.empty((count, s.frames, s.height, s.width, 3), dtype=np.uint8)
    clips = np.empty_like(controls)
    captions = []
    for k in range(count):
        control, clip, text, _ = pair(first_seed + k, s.frames, s.height)
        controls[k], clips[k] = np.round(control * 255), np.round(clip * 255)
        captions.append(text)
    return controls, clips, captions


def train_control(cfg: Config, ckpt: Path, run: Path, log: Log, stop_after: int | None = None,
                  device: torch.device = torch.device("cpu")) -> Path | None:
    """Train (or resume) the control adapter of `cfg` on the frozen model `ckpt` in folder `run`. Returns the
    adapter's file, or None when `stop_after` steps ended the call early."""
    tc, m = train_config(cfg), cfg.model
    if m.adapter is None or m.adapter.signal != "brightness":
        raise VcraftError(f"config '{cfg.name}' has no brightness control adapter (model.adapter) to train")
    cc = tc.control
    run.mkdir(parents=True, exist_ok=True)
    models = frozen_model(cfg, ckpt, device)
    data_path = run / "control_data.safetensors"
    if not data_path.is_file():
        t0 = time.perf_counter()
        controls, clips, captions = make_pairs(cfg, cc.pairs, tc.seed * 10**6 + 500_000)
        latents = encode_dataset(models.autoencoder, clips) * m.scale_factor
        save_state_dict({"controls": torch.from_numpy(controls), "latents": latents}, data_path,
                        metadata={"captions": "\n".join(captions)})
        log(f"control data: {cc.pairs} pairs drawn and encoded in {time.perf_counter() - t0:.0f} s")
    from safetensors import safe_open
    from safetensors.torch import load_file

    data = load_file(data_path)
    with safe_open(str(data_path), "pt") as f:
        captions = f.metadata()["captions"].split("\n")
    controls, latents = data["controls"], data["latents"]
    torch.manual_seed(tc.seed + 4)
    adapter = BY_NAME["adapter"].build(m, BuildOptions()).to(device)
    opt = optimiser(adapter.parameters(), cc.lr, 0.0)
    path = run / "adapter.pt"
    start, _ = resume(path, adapter, opt, tc.seed + 4)
    settings = replace(tc.diffusion, given_frames_prob=0.0, caption_dropout=cc.caption_dropout, phases=[])

    def step(i: int) -> tuple[float, float]:
        lr = set_lr(opt, lr_at(i, cc.steps, cc.lr, cc.warmup))
        idx = torch.randint(len(latents), (cc.batch_size,))
        maps = brightness(to_pixels(controls[idx].numpy()).to(device))
        loss = diffusion_loss(models, cfg, latents[idx].to(device), [captions[k] for k in idx.tolist()], settings,
                              control=adapter(maps))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(adapter.parameters(), 1.0)
        opt.step()
        return loss.item(), lr

    def save(done: int) -> None:
        save_state({"model": adapter.state_dict(), "optimiser": opt.state_dict(), "rng": torch.get_rng_state(),
                    "step": done}, path)

    adapter.train()
    if not run_steps("control", run, start, cc.steps, stop_after, tc.checkpoint_every, step, save, log):
        return None
    out = run / "adapter.safetensors"
    save_state_dict({k: v.cpu() for k, v in adapter.state_dict().items()}, out, "fp16",
                    {"format": "vcraft", "preset": cfg.name, "component": "adapter"})
    return out
