"""Training on a tiny config: a stopped run resumes bit for bit."""

from __future__ import annotations

import shutil

import pytest
import torch

import vcraft.pipeline.api
import vcraft.train.stages
from vcraft.config import apply_overrides, load_preset
from vcraft.errors import VcraftError
from vcraft.pipeline.api import TextToVideo
from vcraft.sampling.schedule import frame_noise, q_sample
from vcraft.train import diffusion_loss, draw_timesteps, initial_models, train

TINY = [
    "train.videos=6", "train.turns=0", "train.checkpoint_every=2", "train.diffusion.blend_step=null",
    "train.autoencoder.steps=4", "train.autoencoder.batch_size=4", "train.text.steps=3", "train.text.batch_size=4",
    "train.diffusion.steps=4", "train.diffusion.phases=[]", "train.diffusion.batch_size=2", "train.diffusion.warmup=1",
    "model.unet.channel_mult=[1,2]", "model.unet.attention_resolutions=[2]", "model.unet.model_channels=16",
    "model.unet.num_head_channels=16",
    "model.text_encoder.layers=1", "sampling.frames=8", "sampling.height=32", "sampling.width=32",
]


def tiny_config(*extra: str):
    return apply_overrides(load_preset("shapes"), TINY + list(extra))


@pytest.mark.slow
def test_stop_and_resume_is_bit_exact(tmp_path):
    cfg = tiny_config("train.turns=3", "train.diffusion.turn_prob=0.5")  # turning clips too, encoded once
    straight = train(cfg, tmp_path / "straight", log=lambda _: None)
    assert straight is not None and straight.is_file()

    resumed_run = tmp_path / "resumed"
    assert train(cfg, resumed_run, log=lambda _: None, stop_after=3) is None  # inside the autoencoder stage
    assert train(cfg, resumed_run, log=lambda _: None, stop_after=2) is None  # autoencoder done, 2 diffusion
    resumed = train(cfg, resumed_run, log=lambda _: None)
    assert resumed is not None

    assert (resumed_run / "turns.safetensors").is_file()
    a = torch.load(tmp_path / "straight" / "diffusion.pt", weights_only=True)
    b = torch.load(resumed_run / "diffusion.pt", weights_only=True)
    assert a["step"] == b["step"] == 4
    for part in ("model", "ema"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), (part, key)
    from safetensors.torch import load_file

    exported = load_file(resumed)  # once: reading it per key made this test quadratic
    assert all(torch.equal(v, exported[k]) for k, v in load_file(straight).items())


PHASES = ["train.diffusion.steps=5", "train.diffusion.phases=[{until: 3}, "
          "{until: 5, given_frames_prob: 1, shift_given: true, batch_size: 3, lr: 1.0e-3}]"]


def _recording_settings(monkeypatch) -> list[tuple[float, bool, int]]:
    """Every diffusion batch's (given_frames_prob, shift_given, batch size), as the loss is handed them."""
    seen = []
    loss = vcraft.train.stages.diffusion_loss

    def recording(models, cfg, latents, captions, settings=None, **rest):
        seen.append((settings.given_frames_prob, settings.shift_given, len(latents)))
        return loss(models, cfg, latents, captions, settings, **rest)

    monkeypatch.setattr(vcraft.train.stages, "diffusion_loss", recording)
    return seen


def _same_weights(a, b) -> None:
    from safetensors.torch import load_file

    x, y = (torch.load(run / "diffusion.pt", weights_only=True) for run in (a, b))
    assert x["step"] == y["step"]
    for part in ("model", "ema"):
        for key, value in x[part].items():
            assert torch.equal(value, y[part][key]), (part, key)
    exported = load_file(b / "model.safetensors")
    assert all(torch.equal(v, exported[k]) for k, v in load_file(a / "model.safetensors").items())


@pytest.mark.slow
def test_phases_train_with_their_settings_and_resume_across_a_boundary(tmp_path, monkeypatch):
    """One run with two phases: each phase's settings for its steps; stopped inside the first phase and again
    after the boundary, it ends with the same weights; and it equals the two phases run the old way, one
    command after the other in one folder with the options given."""
    seen = _recording_settings(monkeypatch)
    first, second = (0.25, False, 2), (1.0, True, 3)
    cfg = tiny_config(*PHASES)
    straight = tmp_path / "straight"
    assert train(cfg, straight, log=lambda _: None) is not None
    assert seen == [first] * 3 + [second] * 2
    assert "diffusion phase 2 of 2, steps 3-5: " in (straight / "train.log").read_text()

    def run_sharing_the_autoencoder(name):
        run = tmp_path / name
        run.mkdir()
        shutil.copy(straight / "latents.safetensors", run)  # the autoencoder stage is not what is tested here
        return run

    resumed = run_sharing_the_autoencoder("resumed")
    seen.clear()
    assert train(cfg, resumed, log=lambda _: None, stop_after=2) is None
    assert train(cfg, resumed, log=lambda _: None, stop_after=2) is None  # across the boundary, after step 3
    assert torch.load(resumed / "diffusion.pt", weights_only=True)["step"] == 4
    assert train(cfg, resumed, log=lambda _: None) is not None
    assert seen == [first] * 3 + [second] * 2
    _same_weights(straight, resumed)

    by_hand = run_sharing_the_autoencoder("by_hand")
    assert train(tiny_config("train.diffusion.steps=3"), by_hand, log=lambda _: None) is not None
    later = ["train.diffusion.steps=5", "train.diffusion.given_frames_prob=1", "train.diffusion.shift_given=true",
             "train.diffusion.batch_size=3", "train.diffusion.lr=1.0e-3"]
    assert train(tiny_config(*later), by_hand, log=lambda _: None) is not None
    _same_weights(straight, by_hand)


@pytest.mark.slow
def test_the_exported_weights_blend_in_the_ema_of_blend_step_across_a_resume(tmp_path):
    """`blend_step: 2, blend_share: 0.25`: the export is 0.75 x the final EMA + 0.25 x the EMA of step 2 (after two
    steps), the same when stopped before that step and again after it; a run past it without its weights is refused."""
    from safetensors.torch import load_file

    from vcraft.train.stages import checkpoint_layout

    cfg = tiny_config(*PHASES, "train.diffusion.blend_step=2", "train.diffusion.blend_share=0.25")
    straight = tmp_path / "straight"
    assert train(cfg, straight, log=lambda _: None) is not None
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copy(straight / "latents.safetensors", resumed)
    assert train(cfg, resumed, log=lambda _: None, stop_after=2) is None
    at_2 = torch.load(resumed / "diffusion.pt", weights_only=True)
    assert at_2["step"] == 2 and not at_2["kept"]
    assert train(cfg, resumed, log=lambda _: None, stop_after=2) is None
    kept = torch.load(resumed / "diffusion.pt", weights_only=True)["kept"]
    assert kept.keys() == at_2["ema"].keys() and all(torch.equal(v, at_2["ema"][k]) for k, v in kept.items())
    assert train(cfg, resumed, log=lambda _: None) is not None
    _same_weights(straight, resumed)

    final = torch.load(resumed / "diffusion.pt", weights_only=True)["ema"]
    expected = checkpoint_layout({k: torch.lerp(at_2["ema"][k], v, 0.75) for k, v in final.items()})
    exported = load_file(resumed / "model.safetensors")
    assert all(torch.equal(exported[k], v.to(exported[k].dtype)) for k, v in expected.items())
    assert not all(torch.equal(exported[k], v.to(exported[k].dtype)) for k, v in checkpoint_layout(final).items())

    late = tmp_path / "late"
    late.mkdir()
    shutil.copy(straight / "latents.safetensors", late)
    assert train(tiny_config(*PHASES), late, log=lambda _: None, stop_after=3) is None
    with pytest.raises(VcraftError, match="past step 2 without the weights of that step"):
        train(cfg, late, log=lambda _: None)


def test_the_shapes_recipe_is_its_five_phases():
    """The shipped recipe: the first training, then continuation with the cosine of 3,000 steps from step 2,400
    on, then a restart on the cosine of 5,400 steps from step 3,000 on, with timesteps towards the clean end;
    then two restarts with clips that turn, the weights of step 5,400 blended into the exported ones."""
    from vcraft.train import diffusion_lr, lr_at, phase_of

    tc = load_preset("shapes").train
    d = tc.diffusion
    phases = d.resolved_phases()
    assert [until for until, _ in phases] == [2400, 3000, 5400, 6400, 8400] and d.steps == 8400
    assert tc.turns == 2000 and (d.blend_step, d.blend_share) == (5400, 0.3)
    for step, until, shift, exponent, turns, lr in [
            (0, 2400, False, 1, 0, d.lr), (2399, 2400, False, 1, 0, d.lr), (2400, 3000, True, 1, 0, d.lr),
            (2999, 3000, True, 1, 0, d.lr), (3000, 5400, True, 2, 0, d.lr), (5399, 5400, True, 2, 0, d.lr),
            (5400, 6400, True, 2, 0.3, 3e-3), (6400, 8400, True, 2, 0.5, 2.2e-3), (8399, 8400, True, 2, 0.5, 2.2e-3)]:
        _, settings = phase_of(step, phases)
        assert (settings.shift_given, settings.timestep_exponent, settings.turn_prob) == (shift, exponent, turns)
        assert settings.given_frames_prob == (0.5 if shift else 0.25) and settings.lr == lr
        assert diffusion_lr(step, phases) == lr_at(step, until, lr, d.warmup)


@pytest.mark.parametrize("overrides, message", [
    (["train.diffusion.steps=3000"], "phases end at step 8400 but train.diffusion.steps is 3000"),
    (["train.diffusion.steps=9", "train.diffusion.phases=[{until: 5}, {until: 5}]"],
     r"phases\[1\].until must be a whole number of steps above 5"),
    (["train.diffusion.steps=9", "train.diffusion.phases=[{until: 9, colour: red}]"],
     r"phases\[0\] sets 'colour', which a phase cannot set; it can set: batch_size"),
    (["train.diffusion.steps=9", "train.diffusion.phases=[{until: 9, steps: 3}]"], "sets 'steps'"),
    (["train.diffusion.steps=9", "train.diffusion.phases=[{until: 9, lr: fast}]"], "could not be converted"),
    (["train.turns=0", "train.diffusion.steps=9", "train.diffusion.phases=[{until: 4}, {until: 9, turn_prob: 0.3}]"],
     r"phases\[1\].turn_prob needs train.turns above 0"),
    (["train.diffusion.turn_prob=1.5"], "train.diffusion.turn_prob must be between 0 and 1, not 1.5"),
    (["train.diffusion.steps=9", "train.diffusion.phases=[{until: 9, timestep_exponent: 0}]"],
     "timestep_exponent must be above 0"),
    (["train.diffusion.steps=9", "train.diffusion.phases=[{until: 9, blend_step: 3}]"], "sets 'blend_step'"),
    (["train.diffusion.steps=9", "train.diffusion.phases=[]"],
     "blend_step must be a step from 0 to 8, or null, not 5400"),
    (["train.diffusion.blend_share=1"], "blend_share must be between 0 and 1, not 1"),
])
def test_phases_are_validated_with_the_config(overrides, message):
    with pytest.raises(VcraftError, match=message) as raised:
        apply_overrides(load_preset("shapes"), overrides)
    assert "\n" not in str(raised.value)
    assert apply_overrides(load_preset("shapes"), ["train.diffusion.steps=7", "train.diffusion.phases=[]",
                                                   "train.diffusion.blend_step=6"])


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
    unet = initial_models(tiny_config("model.unet.use_relative_position=true")).unet
    tables = [m.embeddings_table for m in unet.modules() if isinstance(m, RelativePosition)]
    assert tables
    for table in tables:
        bound = (6 / sum(table.shape)) ** 0.5  # Xavier uniform
        assert torch.isfinite(table).all() and 0 < table.std() and table.abs().max() <= bound


@pytest.mark.parametrize("option, new_keys", [(None, set()), ("frame_positions", set()),
                                             ("frame_embedding", {"frame_embedding.0.weight", "frame_embedding.0.bias",
                                                                  "frame_embedding.2.weight", "frame_embedding.2.bias"})])
def test_frame_order_options_let_the_unet_tell_frames_apart(option, new_keys):
    """Without temporal convolutions (whose zero padding marks the clip's ends) a UNet given the same
    latent in every frame returns the same output in every frame; each frame-order option makes them
    differ, adding only the parameters named."""
    from vcraft.loaders.loading import build_models

    base = ["model.unet.temporal_conv=false", "model.unet.frame_positions=false", "model.unet.frame_embedding=false"]
    extra = [f"model.unet.{option}=true"] if option else []
    torch.manual_seed(0)
    unet = build_models(tiny_config(*base, *extra).model, "cpu").unet  # random init: outputs are not zero
    frame = torch.randn(1, 9, 1, 8, 8)
    with torch.no_grad():
        out = unet(frame.repeat(1, 1, 8, 1, 1), torch.tensor(900), torch.randn(1, 77, 64))
    spread = float((out - out[:, :, :1]).abs().max() / out.abs().max())
    assert (spread > 1e-2) if option else (spread < 1e-5), spread
    plain = build_models(tiny_config(*base).model, "cpu").unet.state_dict()
    assert set(unet.state_dict()) - set(plain) == new_keys


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


def _frame_correlation(noise: torch.Tensor) -> float:
    """Mean correlation between different frames of `[b, c, frames, h, w]` noise."""
    per_frame = noise.transpose(1, 2).flatten(2).transpose(0, 1).flatten(1)  # [frames, everything else]
    corr = torch.corrcoef(per_frame)
    n = len(corr)
    return float((corr.sum() - n) / (n * n - n))


def test_frame_noise_shares_part_of_its_variance_across_frames():
    """Share 0 is exactly the plain draw (every seed's noise as before the option); 0.5 keeps unit variance
    per frame and correlates any two frames by 0.5."""
    def draws(share: float) -> torch.Tensor:
        schedule = initial_models(tiny_config(f"model.schedule.frame_noise_share={share}")).schedule
        gen = torch.Generator().manual_seed(0)
        return frame_noise(schedule, lambda n: torch.randn(4, 4, n, 32, 32, generator=gen), 16)

    assert torch.equal(draws(0.0), torch.randn(4, 4, 16, 32, 32, generator=torch.Generator().manual_seed(0)))
    mixed = draws(0.5)
    assert mixed.shape == (4, 4, 16, 32, 32) and abs(mixed.var().item() - 1) < 0.02
    assert abs(_frame_correlation(mixed) - 0.5) < 0.03 and abs(_frame_correlation(draws(0.0))) < 0.03


def test_training_and_sampling_draw_noise_with_the_configured_share(monkeypatch):
    """The noise a batch is trained on and the noise the sampler starts from both have the config's share."""
    cfg = tiny_config("model.schedule.frame_noise_share=0.5")
    models = initial_models(cfg)
    trained = []

    def noising(schedule, x0, t, noise):
        trained.append(noise)
        return q_sample(schedule, x0, t, noise)

    monkeypatch.setattr(vcraft.train.stages, "q_sample", noising)
    diffusion_loss(models, cfg, torch.zeros(16, 4, 8, 16, 16), [""] * 16)
    assert abs(_frame_correlation(trained[0]) - 0.5) < 0.05

    pipe = TextToVideo(cfg, models, torch.device("cpu"), torch.float32)
    started = []

    def first_noise(denoise, x, *args, **kwargs):
        started.append(x)
        return x

    monkeypatch.setattr(vcraft.pipeline.api, "sampler", lambda name: first_noise)
    for seed in range(8):
        list(pipe.latents(pipe.settings("a red circle", seed=seed, frames=8, height=64, width=64, steps=2,
                                        guidance=1.0, eta=0.0, fps=8)))
    assert abs(_frame_correlation(torch.cat(started)) - 0.5) < 0.05


@torch.inference_mode()
def _anchor_error(models, videos) -> float:
    import torch.nn.functional as F

    from vcraft.train import to_pixels

    x = to_pixels(videos[:, :4])
    mean = models.autoencoder.encode_moments(x)[:, :3].transpose(1, 2).flatten(0, 1)
    frames = x.transpose(1, 2).flatten(0, 1)
    return float(F.mse_loss(mean, F.avg_pool2d(frames, frames.shape[-1] // mean.shape[-1])))


@pytest.mark.slow
def test_colour_anchor_ties_the_first_latent_channels_to_the_average_colour(tmp_path):
    from vcraft.train import make_dataset, train_autoencoder

    errors = {}
    for weight in (0.0, 1.0):
        cfg = tiny_config("train.autoencoder.steps=12", f"train.autoencoder.colour_anchor={weight}",
                          "train.checkpoint_every=1000")
        models = initial_models(cfg)
        videos = make_dataset(cfg)[0]
        run = tmp_path / str(weight)
        run.mkdir()
        assert train_autoencoder(models, videos, cfg, run, log=lambda _: None)
        errors[weight] = _anchor_error(models, videos)
    assert errors[1.0] < 0.2 * errors[0.0], errors


@pytest.mark.parametrize("shift", [False, True])
def test_shift_given_rolls_the_whole_clip_of_continuation_examples(shift):
    """The UNet is given the clip's clean first frames, rolled by a random shift per clip when `shift_given`
    is on, and as they are when it is off."""
    cfg = tiny_config("train.diffusion.given_frames_prob=1", f"train.diffusion.shift_given={shift}")
    models = initial_models(cfg)
    seen = []
    unet = models.unet
    models.unet = lambda x, **args: seen.append(x) or unet(x, **args)
    latents = torch.zeros(6, 4, 8, 16, 16)
    latents[:, :, :, 5, 7] = 1.0  # one bright latent pixel in every frame
    torch.manual_seed(0)
    diffusion_loss(models, cfg, latents, [""] * 6)
    given, mask = seen[0][:, 4:8, 0], seen[0][:, 8, 0]  # the first frame is always given
    assert (mask == 1).all()
    places = [tuple(int(i) for i in torch.nonzero(clip[0])[0]) for clip in given]
    for clip, (y, x) in zip(given, places):
        assert torch.equal(clip, latents[0, :, 0].roll((y - 5, x - 7), dims=(-2, -1)))
    assert (len(set(places)) > 1) if shift else (set(places) == {(5, 7)}), places


def test_turning_clips_are_given_exactly_their_frames_before_the_turn():
    """A batch with turning clips mixed in: those clips given their frames before the turn, with their captions; the
    others drawn as usual (here none given)."""
    from vcraft.train.data import TurnClips, with_turns

    cfg = tiny_config("train.diffusion.given_frames_prob=0", "train.diffusion.caption_dropout=0")
    models = initial_models(cfg)
    seen, texts = [], []
    unet, encode = models.unet, models.text_encoder.encode
    models.unet = lambda x, **args: seen.append(x) or unet(x, **args)
    models.text_encoder.encode = lambda captions: texts.extend(captions) or encode(captions)
    turns = TurnClips(torch.ones(3, 4, 8, 16, 16), ["turn 0", "turn 1", "turn 2"], torch.tensor([2, 5, 7]))
    torch.manual_seed(0)
    latents, captions, given = with_turns(torch.zeros(8, 4, 8, 16, 16), ["plain"] * 8, turns, 0.5)
    picked = given > 0
    assert 0 < picked.sum() < 8
    assert torch.equal(latents.flatten(1).amax(1) == 1, picked)
    assert [c.startswith("turn") for c in captions] == picked.tolist()
    torch.manual_seed(1)
    diffusion_loss(models, cfg, latents, captions, given_exactly=given)
    frames_given = seen[0][:, 8, :, 0, 0].sum(1)  # the mask channel
    assert torch.equal(frames_given.long(), given) and texts == captions
