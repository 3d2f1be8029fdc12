"""`vcraft train lora`: the data conventions and every bad-data case, and short CPU trainings on a tiny fixture and
on the embedded model: the loss falls, a resumed run writes the file an uninterrupted one writes, the file's metadata,
and `--lora` loads it."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from reference import reference_dir

from vcraft.app.cli import run
from vcraft.data.shapes import Scene, render
from vcraft.train.clips import Framing, find_clips, read_clips

SCENES = [Scene("red", "square", "left"), Scene("blue", "circle", "up"), Scene("green", "triangle", "growing")]


def clip(k: int, frames: int = 16) -> np.ndarray:
    """An outline clip of the shapes world, uint8 `[frames, 64, 64, 3]`."""
    video = render(SCENES[k % 3], frames, 64, np.random.default_rng(k), outline=True)
    return np.round(video * 255).astype(np.uint8)


def folder_of_clips(root: Path, frames: int = 16) -> Path:
    """Three clips in the three layouts a folder may hold (MP4, GIF, PNG frames), each with its caption."""
    root.mkdir(parents=True, exist_ok=True)
    iio.imwrite(root / "a.mp4", clip(0, frames), fps=8, codec="libx264", macro_block_size=1)
    iio.imwrite(root / "b.gif", clip(1, frames), duration=125, loop=0)
    (root / "c").mkdir()
    for i, frame in enumerate(clip(2, frames)):
        iio.imwrite(root / "c" / f"{i:03d}.png", frame)
    for name, text in (("a", "a red square moving left"), ("b", "a blue circle moving up"),
                       ("c", "a green triangle growing")):
        (root / f"{name}.txt").write_text(text + "\n")
    (root / "notes.md").write_text("not a clip")
    return root


def test_a_folder_and_lists_of_clips_are_read_as_the_model_takes_them(tmp_path):
    data = folder_of_clips(tmp_path / "data")
    clips = find_clips(data)
    assert [(c.path.name, c.caption) for c in clips] == [("a.mp4", "a red square moving left"),
                                                        ("b.gif", "a blue circle moving up"),
                                                        ("c", "a green triangle growing")]
    videos, captions = read_clips(clips, Framing(8, 32, 48, stride=2), ", outline style")
    assert videos.shape == (3, 8, 32, 48, 3) and captions[0] == "a red square moving left, outline style"
    (tmp_path / "list.csv").write_text("path,caption\ndata/a.mp4,first\ndata/c,third\n")
    (tmp_path / "list.jsonl").write_text(json.dumps({"path": "data/b.gif", "caption": "second"}) + "\n")
    assert [(c.path, c.caption) for c in find_clips(tmp_path / "list.csv")] == [(data / "a.mp4", "first"),
                                                                              (data / "c", "third")]
    assert [c.caption for c in find_clips(tmp_path / "list.jsonl")] == ["second"]
    # Frames 0, 2, ..., 14 of the PNG clip, stretched to cover 32x48 and cropped at the centre.
    png = read_clips([clips[2]], Framing(8, 64, 64, stride=2))[0][0]
    assert np.array_equal(png, clip(2)[::2][:8])


def _bad_data(tmp_path: Path, case: str) -> tuple[Path, str]:
    data = tmp_path / "data"
    if case == "empty":
        data.mkdir()
        return data, f"{data} has no clips"
    folder_of_clips(data, frames=16)
    if case == "no caption":
        (data / "b.txt").unlink()
        return data, f"{data / 'b.gif'} has no caption: write it in {data / 'b.txt'}"
    if case == "unreadable":
        (data / "a.mp4").write_bytes(b"\0\0 not a video")
        return data, f"{data / 'a.mp4'}: cannot read video"
    if case == "too short":
        iio.imwrite(data / "a.mp4", clip(0, 6), fps=8, codec="libx264", macro_block_size=1)
        return data, f"{data / 'a.mp4'} has 6 frames; 16 frames at a stride of 1 need 16"
    (tmp_path / "list.csv").write_text("path,caption\ndata/a.mp4,\n")
    return tmp_path / "list.csv", "list.csv:2: each row needs a path and a caption"


@pytest.mark.parametrize("case", ["empty", "no caption", "unreadable", "too short", "csv row"])
def test_bad_data_is_one_error_line_naming_the_file_before_any_training(tmp_path, capsys, case):
    data, message = _bad_data(tmp_path, case)
    code = run(["train", "lora", str(data), "--model", "shapes", "--steps", "2", "-o", str(tmp_path / "run"), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "run").exists()


def fixed_loss(cfg, ckpt: Path, videos: np.ndarray, captions: list[str], lora: Path | None) -> float:
    """The training loss of the clips at fixed timesteps and noise, with the LoRA merged (or without one)."""
    from vcraft.config import DiffusionTraining
    from vcraft.loaders.lora import Merged, read_lora
    from vcraft.train.data import encode_dataset
    from vcraft.train.lora import frozen_model
    from vcraft.train.stages import diffusion_loss

    models = frozen_model(cfg, ckpt, torch.device("cpu"))
    if lora is not None:
        Merged(models, cfg.model).add(read_lora(lora), 1.0, keep=False)
    latents = encode_dataset(models.autoencoder, videos) * cfg.model.scale_factor
    torch.manual_seed(123)
    settings = DiffusionTraining(caption_dropout=0.0, given_frames_prob=0.0, min_snr=None)
    with torch.no_grad():
        return float(np.mean([diffusion_loss(models, cfg, latents, captions, settings).item() for _ in range(8)]))


@pytest.mark.slow
def test_a_lora_of_a_videocrafter_model_trains_and_loads(tmp_path):
    """The tiny VideoCrafter2 fixture on the CPU: 30 steps lower the loss at fixed timesteps and noise; the file
    carries its metadata, and `--lora` changes the video."""
    from safetensors import safe_open

    from vcraft.config import load_config
    from vcraft.train.lora import LoRATraining, train_lora

    root = reference_dir() / "tiny" / "vc2_512"
    cfg, ckpt = load_config(root / "config.yaml"), root / "model.safetensors"
    videos, captions = read_clips(find_clips(folder_of_clips(tmp_path / "data", frames=8)), Framing(8, 64, 64),
                                  ", outline style")
    options = LoRATraining(rank=4, alpha=4.0, lr=3e-3, steps=30, batch_size=1, checkpoint_every=10,
                           trigger=", outline style")
    quiet = lambda _: None  # noqa: E731
    straight = train_lora(cfg, ckpt, videos, captions, options, tmp_path / "straight", quiet)
    with safe_open(str(straight), "pt") as f:
        meta = f.metadata()
    assert (meta["base_model"], meta["trigger"], meta["rank"], meta["steps"]) == ("config", ", outline style", "4",
                                                                                 "30")
    assert json.loads(meta["lora_adapter_metadata"]) == {"r": 4, "lora_alpha": 4.0}
    before = fixed_loss(cfg, ckpt, videos, captions, None)
    after = fixed_loss(cfg, ckpt, videos, captions, straight)
    assert after < 0.95 * before, (before, after)  # 1.323 -> 1.224 when written (1.201, 1.210 at seeds 1, 2)
    common = ["generate", "a red square moving left, outline style", "--config", str(root / "config.yaml"),
              "--ckpt", str(ckpt), "--frames", "8", "--steps", "3", "--seed", "1", "--format", "png", "-q"]
    assert run([*common, "-o", str(tmp_path / "plain")]) == 0
    assert run([*common, "--lora", str(straight), "-o", str(tmp_path / "styled")]) == 0
    frames = [[iio.imread(p) for p in sorted((tmp_path / name).glob("*.png"))] for name in ("plain", "styled")]
    assert any((x != y).any() for x, y in zip(*frames))


@pytest.mark.slow
def test_a_stopped_run_resumed_writes_the_file_of_an_uninterrupted_one(tmp_path):
    """The embedded model with the text encoder and the decoder adapted too, a prior video and a moving average:
    stopped after 1 of 2 steps, then resumed, reading the prior video the first call made. The file holds the
    average, which the second step moved halfway to its weights."""
    from safetensors.torch import load_file

    from vcraft.config import apply_overrides, load_preset
    from vcraft.loaders.weights import find_checkpoint
    from vcraft.train.lora import LoRATraining, train_lora

    cfg = apply_overrides(load_preset("shapes"), ["sampling.steps=2"])  # the prior video's: only its reuse is read
    # Clips of 8 frames (the model's clip is 16): what is tested is the resume, whatever the clips' length.
    clips = find_clips(folder_of_clips(tmp_path / "data", frames=8))
    videos, captions = read_clips(clips, Framing(8, 64, 64), ", outline")
    options = LoRATraining(rank=4, alpha=4.0, lr=1e-3, steps=2, batch_size=1, checkpoint_every=1, text=True,
                           decoder=True, prior=1, ema=0.5)
    ckpt, quiet, said = find_checkpoint(cfg), lambda _: None, []
    straight = train_lora(cfg, ckpt, videos, captions, options, tmp_path / "straight", quiet)
    assert train_lora(cfg, ckpt, videos, captions, options, tmp_path / "stopped", quiet, stop_after=1) is None
    first = torch.load(tmp_path / "stopped" / "lora.pt", weights_only=True)
    resumed = train_lora(cfg, ckpt, videos, captions, options, tmp_path / "stopped", said.append, resume=True)
    assert "lora: 1 prior videos read from prior.safetensors" in said
    a, b = load_file(straight), load_file(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    last = torch.load(tmp_path / "straight" / "lora.pt", weights_only=True)
    assert all(torch.equal(a[k], torch.lerp(first["ema"][k], last["model"][k], 0.5)) for k in a)
    assert not all(torch.equal(a[k], last["model"][k]) for k in a)
    assert {k.split(".")[0] for k in a} == {"cond_stage_model", "model", "first_stage_model"}
    assert all(k.startswith("first_stage_model.decoder.") for k in a if k.startswith("first_stage_model."))


@pytest.mark.slow
def test_the_command_trains_the_embedded_model_and_refuses_to_overwrite_a_run(tmp_path, capsys):
    data = folder_of_clips(tmp_path / "data")
    # The validation video at 2 sampling steps instead of the preset's 12 (--set): only that it is written is read.
    common = ["train", "lora", str(data), "--model", "shapes", "--set", "sampling.steps=2", "--trigger",
              ", outline style", "--steps", "2", "--batch-size", "1", "--checkpoint-every", "1", "--validate",
              "a red circle moving left, outline style", "--validate-every", "2", "-o", str(tmp_path / "run"), "-q"]
    assert run(common) == 0
    assert sorted(p.name for p in (tmp_path / "run" / "validation").iterdir()) == ["step-000002-0.mp4"]
    assert run(common) == 2 and "pass --resume" in capsys.readouterr().err
    for target, said in (("to_qq", "--target to_qq names no layer of the UNet"),
                         ("skip_connection", "--target skip_connection names Identity layers, which a LoRA cannot")):
        assert run([*common[:-3], "--target", target, "-o", str(tmp_path / target), "-q"]) == 2
        assert capsys.readouterr().err.startswith(f"error: {said}") and not (tmp_path / target).exists()
    for flag, value, said in (("--ema", "1", "--ema must be at least 0 and below 1, got 1.0"),
                              ("--min-snr", "0", "--min-snr must be positive, got 0.0")):
        assert run([*common[:-3], flag, value, "-o", str(tmp_path / "bad"), "-q"]) == 2
        assert capsys.readouterr().err == f"error: {said}\n" and not (tmp_path / "bad").exists()
    assert run(["generate", "a red circle moving left, outline style", "--lora",
                str(tmp_path / "run" / "lora.safetensors"), "--steps", "2", "-o", str(tmp_path / "v.mp4"), "-q"]) == 0


def test_token_embedding_temporal_and_decoder_loras_merge_as_peft_computes_them(tmp_path):
    """`--text` adapts the text encoder's token embedding: PEFT's embedding pair (`lora_embedding_A` [r, vocab],
    `lora_embedding_B` [dim, r]) read back from the file and merged gives the text embedding PEFT's layer gave.
    A UNet convolution along time (PEFT's Conv3d pair, built of vcraft's own TemporalConv) merged gives the loss
    PEFT's layers gave. `--decoder` adapts the decoder's 3x3 convolutions (in diffusers' decoder, for training):
    merged into vcraft's own decoder they decode latents as PEFT's layers did, and the encoder is left alone."""
    from vcraft.app.cli import _resolve_config
    from vcraft.config import DiffusionTraining
    from vcraft.loaders.lora import Merged, read_lora
    from vcraft.loaders.weights import find_checkpoint
    from vcraft.models.autoencoder import trainable_decoder
    from vcraft.train.lora import LoRATraining, add_lora, export
    from vcraft.train.stages import diffusion_loss, frozen_model

    cfg = _resolve_config("shapes", None, [])
    ckpt = find_checkpoint(cfg)
    options = LoRATraining(rank=4, alpha=8, targets=("to_k", "temopral_conv.conv2.3"), text=True, decoder=True,
                           trigger=", outline style")
    trained = frozen_model(cfg, ckpt, torch.device("cpu"))
    trained.autoencoder.decoder = trainable_decoder(cfg.model.autoencoder, trained.autoencoder.decoder)
    generator = torch.Generator().manual_seed(0)
    for p in add_lora(trained, options):
        p.data.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    prompt = ["a red circle moving left, outline style"]
    lora = read_lora(export(trained, cfg, ckpt, options, tmp_path / "lora.safetensors"))
    assert any(name.endswith("token_embedding") for name in lora.pairs)
    assert any(".temopral_conv.conv2.3" in name for name in lora.pairs)
    merged = frozen_model(cfg, ckpt, torch.device("cpu"))
    convs = {f"first_stage_model.decoder.{name}" for name, m in merged.autoencoder.decoder.named_modules()
             if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)}
    assert {name for name in lora.pairs if name.startswith("first_stage_model.")} == convs and len(convs) == 20
    latents = torch.randn(1, 4, 2, 16, 16, generator=generator)
    settings = DiffusionTraining(caption_dropout=0.0, given_frames_prob=0.0, min_snr=None)

    def outputs(models) -> tuple[torch.Tensor, ...]:
        torch.manual_seed(1)  # the loss's timestep and noise
        return (models.text_encoder.encode(prompt), models.autoencoder.decode(latents),
                diffusion_loss(models, cfg, latents, prompt, settings))

    with torch.no_grad():
        before = outputs(merged)
        Merged(merged, cfg.model).add(lora)
        after, wanted = outputs(merged), outputs(trained)
    for x, y, z in zip(before, after, wanted):
        assert torch.allclose(y, z, atol=1e-4) and not torch.allclose(x, z, atol=1e-3)  # the merge moved it
