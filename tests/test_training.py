"""Training on a tiny config: a stopped run resumes bit for bit."""

from __future__ import annotations

import torch

from vcraft.config import apply_overrides, load_preset
from vcraft.training import draw_timesteps, train

TINY = [
    "train.videos=6", "train.checkpoint_every=2",
    "train.autoencoder.steps=4", "train.autoencoder.batch_size=4", "train.text.steps=3", "train.text.batch_size=4",
    "train.diffusion.steps=4", "train.diffusion.batch_size=2", "train.diffusion.warmup=1",
    "model.unet.channel_mult=[1,2]", "model.unet.attention_resolutions=[2]",
    "model.text_encoder.layers=1", "sampling.frames=8",
]


def tiny_config(*extra: str):
    return apply_overrides(load_preset("shapes"), TINY + list(extra))


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


def test_training_a_config_without_a_train_section_is_refused(tmp_path):
    from test_cli import tiny, vcraft

    run = tmp_path / "run"
    result = vcraft("train", tiny() / "config.yaml", "-o", run)
    assert result.returncode == 2 and not run.exists()
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and "has no train section" in result.stderr
    assert "Traceback" not in result.stderr


def test_relative_positions_start_from_an_initialised_table():
    """Nothing fills the temporal attention's relative-position table when training from scratch: it must be
    initialised (an uninitialised one made the first diffusion steps NaN)."""
    from vcraft.models.attention import RelativePosition
    from vcraft.training import initial_models

    unet = initial_models(tiny_config("model.unet.use_relative_position=true")).unet
    tables = [m.embeddings_table for m in unet.modules() if isinstance(m, RelativePosition)]
    assert tables
    for table in tables:
        bound = (6 / sum(table.shape)) ** 0.5  # Xavier uniform
        assert torch.isfinite(table).all() and 0 < table.std() and table.abs().max() <= bound


def test_timestep_exponent_shifts_draws_to_the_noisy_end():
    """Exponent 1 is the plain uniform draw (randint, so runs made before the option reproduce); 0.5 gives a
    density rising linearly with t: mean 2/3 of the way, a quarter of the draws below the middle."""
    torch.manual_seed(0)
    uniform = draw_timesteps(1000, 20000)
    torch.manual_seed(0)
    assert torch.equal(uniform, torch.randint(1000, (20000,)))
    skewed = draw_timesteps(1000, 20000, 0.5)
    assert skewed.min() >= 0 and skewed.max() <= 999
    assert abs(skewed.float().mean().item() - 666) < 10 and abs((skewed < 500).float().mean().item() - 0.25) < 0.02
