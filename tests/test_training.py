"""Training on a tiny config: the loss goes down, and a stopped run resumes bit for bit."""

from __future__ import annotations

import torch

from vcraft.config import apply_overrides, load_preset
from vcraft.models.text_encoder import tokenize
from vcraft.training import diffusion_loss, initial_models, train

TINY = [
    "train.videos=6", "train.checkpoint_every=2",
    "train.autoencoder.steps=4", "train.autoencoder.batch_size=4",
    "train.diffusion.steps=4", "train.diffusion.batch_size=2", "train.diffusion.warmup=1",
    "model.unet.channel_mult=[1,2]", "model.unet.attention_resolutions=[2]",
    "model.text_encoder.layers=1", "sampling.frames=8",
]


def tiny_config(*extra: str):
    return apply_overrides(load_preset("shapes"), TINY + list(extra))


def fixed_loss(models, cfg, latents, tokens, empty) -> float:
    torch.manual_seed(123)  # the same timesteps, noise and dropout for every evaluation
    with torch.no_grad():
        return float(diffusion_loss(models, cfg, latents, tokens, empty))


def test_a_few_steps_lower_the_loss():
    cfg = tiny_config()
    models = initial_models(cfg)
    torch.manual_seed(0)
    latents = torch.randn(1, 4, 8, 16, 16).expand(4, -1, -1, -1, -1)  # one clip: its noise can be learned away
    tokens = tokenize(["a red circle moving left"] * 4)
    empty = tokenize([""])
    before = fixed_loss(models, cfg, latents, tokens, empty)
    params = [p for m in (models.unet, models.text_encoder) for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=5e-3)
    for _ in range(30):
        loss = diffusion_loss(models, cfg, latents, tokens, empty)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = fixed_loss(models, cfg, latents, tokens, empty)
    assert after < 0.7 * before, (before, after)


def test_stop_and_resume_is_bit_exact(tmp_path):
    cfg = tiny_config()
    straight = train(cfg, tmp_path / "straight", log=lambda _: None)
    assert straight is not None and straight.is_file()

    resumed_run = tmp_path / "resumed"
    assert train(cfg, resumed_run, log=lambda _: None, stop_after=3) is None  # inside the autoencoder stage
    assert train(cfg, resumed_run, log=lambda _: None, stop_after=2) is None  # autoencoder done, 2 diffusion
    resumed = train(cfg, resumed_run, log=lambda _: None)
    assert resumed is not None

    a = torch.load(tmp_path / "straight" / "diffusion.pt", weights_only=True)
    b = torch.load(resumed_run / "diffusion.pt", weights_only=True)
    assert a["step"] == b["step"] == 4
    for part in ("model", "ema"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), (part, key)
    from safetensors.torch import load_file

    assert all(torch.equal(v, load_file(resumed)[k]) for k, v in load_file(straight).items())
