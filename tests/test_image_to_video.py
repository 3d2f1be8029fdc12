"""VideoCrafter1's image-to-video model (vc1_i2v_512) against the original's numbers, stage by stage
(../shared/reference/tiny/vc1_i2v_512 and its README section 7)."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from reference import assert_close, reference_dir
from vcraft.checkpoints import load_state_dict
from vcraft.config import load_config
from vcraft.inputs import picture_tensor, read_picture
from vcraft.loading import load_models
from vcraft.models.image_encoder import shrink_blur
from vcraft.models.tokenizer import tokenize
from vcraft.sampling.conditioning import Conditioning
from vcraft.sampling.ddim import sample as ddim_sample
from vcraft.sampling.denoisers import Denoiser
from vcraft.sampling.schedule import q_sample

VARIANT = "vc1_i2v_512"
_cache: dict = {}


def fixture(container: str = "model.safetensors"):
    if container not in _cache:
        root = reference_dir() / "tiny" / VARIANT
        cfg = load_config(root / "config.yaml")
        models = load_models(cfg.model, load_state_dict(root / container), container, encoder=True)
        _cache[container] = (models, load_file(root / "cases.safetensors"),
                             json.loads((root / "cases.json").read_text()))
    return _cache[container]


def single(ours, ref, what: str) -> None:
    """The README's limit for single forwards."""
    assert_close(ours, ref, 1e-5, 1e-5, 1e-6, what)


@pytest.mark.parametrize("container", ["model.ckpt", "model.safetensors"])
def test_unet_with_image_tokens_through_both_containers(container):
    models, cases, _ = fixture(container)
    with torch.inference_mode():
        out = models.unet(cases["unet.x"], cases["unet.t"], cases["unet.context"], cases["unet.fps"])
        tokens = models.image_encoder(cases["image_load.output"])
    single(out, cases["unet.output"], f"unet via {container}")
    single(tokens, cases["image_proj.output"], f"image tokens via {container}")


def test_text():
    models, cases, meta = fixture()
    tokens = tokenize(meta["cases"]["text"]["inputs"]["prompts"])
    assert torch.equal(tokens, cases["text.tokens"])
    with torch.inference_mode():
        single(models.text_encoder(tokens), cases["text.output"], "text")


def test_image_load_resizes_to_the_video_size_as_the_reference():
    _, cases, meta = fixture()
    root = reference_dir() / "tiny" / VARIANT
    picture = read_picture(root / "input.png")
    assert list(picture.pixels.shape[:2]) == meta["cases"]["image_load"]["inputs"]["png_size_hw"]
    out = picture_tensor(picture, 64, 128)
    assert_close(out, cases["image_load.output"], 1e-6, 1e-6, what="image_load")


def test_image_preprocess_embed_and_resampler():
    models, cases, _ = fixture()
    embedder = models.image_encoder.embedder
    with torch.inference_mode():
        single(embedder.preprocess(cases["image_preprocess.input"]), cases["image_preprocess.output"], "preprocess")
        embedded = embedder(cases["image_load.output"])
        single(embedded, cases["image_embed.output"], "image_embed")
        single(models.image_encoder.image_proj_model(cases["image_embed.output"]), cases["image_proj.output"],
               "image_proj")
        single(models.image_encoder.unconditional(1), cases["image_uncond.output"], "image_uncond")


def test_the_antialiasing_blur_acts_only_where_the_picture_shrinks():
    """Enlarging (the fixture's case) leaves the picture as it is; shrinking an axis blurs along it, and a flat
    picture stays flat (the kernel sums to 1, the reflected border adds nothing)."""
    x = torch.randn(1, 3, 64, 128, generator=torch.Generator().manual_seed(0))
    assert torch.equal(shrink_blur(x, (224, 224)), x)
    shrunk = shrink_blur(x, (32, 128))  # the height halves: sigma 0.5, 3 taps along it, the width untouched
    assert shrunk.shape == x.shape and not torch.allclose(shrunk, x)
    flat = torch.full((1, 3, 320, 512), 0.3)
    assert torch.allclose(shrink_blur(flat, (224, 224)), flat, atol=1e-6)


def test_vae_decode_encode_and_q_sample():
    models, cases, _ = fixture()
    with torch.inference_mode():
        decoded = models.autoencoder.decode(cases["vae_decode.z"])
        moments = models.autoencoder.encode_moments(cases["vae_encode.frames"])
    assert_close(decoded, cases["vae_decode.output"], 1e-5, 1e-5, 1e-6, "vae_decode")
    assert_close(moments, cases["vae_encode.moments"], 1e-5, 1e-5, 1e-6, "vae_encode")
    out = q_sample(models.schedule, cases["q_sample.x0"], cases["q_sample.t"], cases["q_sample.noise"])
    single(out, cases["q_sample.output"], "q_sample")


def _ddim(guidance: float, eta: float, prefix: str):
    models, cases, meta = fixture()
    case = meta["cases"][prefix]
    with torch.inference_mode():
        uncond = models.text_encoder.encode([""])
        cond = Conditioning(cases["ddim.text_emb"], uncond, torch.tensor([case["fps"]]),
                            image=cases["ddim.img_emb"], uncond_image=models.image_encoder.unconditional(1))
        draws = iter([cases[k] for k in sorted(cases) if k.startswith(f"{prefix}.noise_step_")])
        recorded = {}
        out = ddim_sample(
            Denoiser(models.unet, cond, guidance), cases["ddim.x_T"], models.schedule, case["ddim_steps_argument"],
            eta, noise=lambda: next(draws),
            callback=lambda step: recorded.update({step.index - 1: (step.x.clone(), step.denoised.clone())}))
    return out, recorded, cases


def test_ddim_with_guidance_every_step():
    out, recorded, cases = _ddim(12.0, 0.0, "ddim_cfg")
    assert len(recorded) == 10
    for i, (x, x0) in recorded.items():
        assert_close(x, cases[f"ddim_cfg.step_{i:02d}.x_prev"], 1e-4, 1e-4, what=f"step {i} x_prev")
        assert_close(x0, cases[f"ddim_cfg.step_{i:02d}.pred_x0"], 1e-4, 1e-4, what=f"step {i} pred_x0")
    assert_close(out, cases["ddim_cfg.output"], 1e-4, 1e-4, what="ddim_cfg")


@pytest.mark.parametrize("guidance,eta,prefix", [(1.0, 0.0, "ddim_nocfg"), (12.0, 1.0, "ddim_eta1")])
def test_ddim_without_guidance_and_with_eta_1(guidance, eta, prefix):
    out, _, cases = _ddim(guidance, eta, prefix)
    assert_close(out, cases[f"{prefix}.output"], 1e-4, 1e-4, what=prefix)


def test_end_to_end_frames():
    from vcraft.video import frames_to_uint8

    out, _, cases = _ddim(12.0, 0.0, "ddim_cfg")
    with torch.inference_mode():
        video = fixture()[0].autoencoder.decode(out)
    assert_close(video.clamp(-1, 1), cases["end_to_end.video_clamped"], 1e-4, 5e-4, what="video_clamped")
    frames = frames_to_uint8(video)[0]
    diff = (frames.int() - cases["end_to_end.frames_uint8"].int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() <= 0.01


def test_full_size_preset_fits_the_official_layout():
    """Every key of the official checkpoint, with its shape, is placed in the preset's modules."""
    from vcraft.config import load_preset
    from vcraft.loading import build_models, place_checkpoint

    manifest = json.loads((reference_dir() / "manifests" / f"{VARIANT}.json").read_text())
    state = {k: torch.empty(v["shape"], device="meta") for k, v in manifest["keys"].items()}
    cfg = load_preset("vc1-i2v-512").model
    models = build_models(cfg, encoder=True)
    place_checkpoint(models, cfg, state, f"{VARIANT} manifest")  # strict: raises on any difference
    counts = manifest["param_counts"]
    image = sum(p.numel() for p in models.image_encoder.parameters())
    assert image == counts["image_encoder"] + counts["image_proj"]
    assert sum(p.numel() for p in models.unet.parameters()) == counts["unet"]


# The command line with the fixture's original YAML (in this process; see tests/test_cli.py).

def i2v_args(*extra) -> list:
    from test_cli import small_video_args

    return [*small_video_args(VARIANT), "--format", "png", *extra]


def test_the_command_line_makes_a_video_from_the_picture_and_records_it(tmp_path):
    from PIL import Image

    from test_cli import read_pngs, vcraft

    root = reference_dir() / "tiny" / VARIANT
    mirrored = tmp_path / "mirrored.png"
    Image.open(root / "input.png").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mirrored)
    made = {}
    for name, picture in (("a", root / "input.png"), ("b", mirrored)):
        result = vcraft("generate", "a red fox running through snow", *i2v_args("--image", picture, "--seed", 3),
                        "-o", tmp_path / name)
        assert result.returncode == 0, result.stderr
        made[name] = read_pngs(tmp_path / name)
    assert made["a"].shape == (8, 64, 128, 3)
    assert np.abs(made["a"].astype(int) - made["b"].astype(int)).mean() > 1.0  # the picture steers the video
    sidecar = json.loads((tmp_path / "a.json").read_text())
    assert sidecar["image"] == str((root / "input.png").resolve())
    assert sidecar["image_sha256"] == hashlib.sha256((root / "input.png").read_bytes()).hexdigest()

    again = vcraft("generate", "--from", tmp_path / "a.json", "-o", tmp_path / "again")
    assert again.returncode == 0, again.stderr
    assert np.array_equal(read_pngs(tmp_path / "again"), made["a"])


def test_a_prompt_file_row_names_its_picture_relative_to_the_file(tmp_path):
    from test_cli import read_pngs, vcraft

    root = reference_dir() / "tiny" / VARIANT
    (tmp_path / "pictures").mkdir()
    shutil.copy(root / "input.png", tmp_path / "pictures" / "fox.png")
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"prompt": "a red fox running through snow", "image": "pictures/fox.png"}) + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = vcraft("generate", "-f", rows, *i2v_args("--seed", 3), "-o", tmp_path / "out", cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    by_argument = vcraft("generate", "a red fox running through snow",
                         *i2v_args("--image", root / "input.png", "--seed", 3), "-o", tmp_path / "arg")
    assert by_argument.returncode == 0
    assert np.array_equal(read_pngs(tmp_path / "out"), read_pngs(tmp_path / "arg"))


def test_a_long_video_follows_the_picture_in_every_window(tmp_path):
    from test_cli import read_pngs, vcraft

    root = reference_dir() / "tiny" / VARIANT
    result = vcraft("generate", "a red fox running through snow",
                    *i2v_args("--image", root / "input.png", "--seed", 3, "--frames", "20", "--steps", "2"),
                    "-o", tmp_path / "long")
    assert result.returncode == 0, result.stderr
    assert read_pngs(tmp_path / "long").shape == (20, 64, 128, 3)


@pytest.mark.parametrize("case", ["missing", "not an image", "text-only model", "no picture"])
def test_bad_pictures_are_one_error_line(tmp_path, case):
    from test_cli import one_error_line, small_video_args, vcraft

    root = reference_dir() / "tiny" / VARIANT
    args, expected = {
        "missing": (i2v_args("--image", tmp_path / "nope.png"), "image not found"),
        "not an image": (i2v_args("--image", root / "config.yaml"), "is not an image"),
        "text-only model": ([*small_video_args(), "--image", root / "input.png"], "needs an image-to-video model"),
        "no picture": (i2v_args(), "give one with --image"),
    }[case]
    result = vcraft("generate", "a fox", *args, "--seed", 1, "-o", tmp_path / "out")
    assert result.returncode == 2
    assert expected in one_error_line(result)
    assert not (tmp_path / "out").exists()
