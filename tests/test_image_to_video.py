"""VideoCrafter1's image-to-video model (vc1_i2v_512) against the original's numbers: its image path, stage by stage
(../shared/reference/tiny/vc1_i2v_512 and its README section 7), and image-to-video from the command line. The
stages it shares with text-to-video (text, UNet through both containers, VAE, noising, DDIM with the image tokens,
the frames) run in tests/test_reference.py for every architecture."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from reference import assert_close, reference_dir
from test_reference import I2V as VARIANT
from test_reference import fixture

from vcraft.models.image_encoder import shrink_blur
from vcraft.pipeline.frames import picture_tensor
from vcraft.pipeline.inputs import read_picture


def single(ours, ref, what: str) -> None:
    """The README's limit for single forwards."""
    assert_close(ours, ref, 1e-5, 1e-5, 1e-6, what)


@pytest.mark.parametrize("container", ["model.ckpt", "model.safetensors"])
def test_the_pictures_tokens_through_both_containers(container):
    models, cases, _ = fixture(VARIANT, container)
    with torch.inference_mode():
        tokens = models.image_projector(models.image_encoder(cases["image_load.output"]))
        single(tokens, cases["image_proj.output"], f"via {container}")


def test_image_load_resizes_to_the_video_size_as_the_reference():
    _, cases, meta = fixture(VARIANT)
    root = reference_dir() / "tiny" / VARIANT
    picture = read_picture(root / "input.png")
    assert list(picture.pixels.shape[:2]) == meta["cases"]["image_load"]["inputs"]["png_size_hw"]
    out = picture_tensor(picture, 64, 128)
    assert_close(out, cases["image_load.output"], 1e-6, 1e-6, what="image_load")


def test_image_preprocess_embed_and_resampler():
    models, cases, _ = fixture(VARIANT)
    embedder = models.image_encoder
    with torch.inference_mode():
        single(embedder.preprocess(cases["image_preprocess.input"]), cases["image_preprocess.output"], "preprocess")
        embedded = embedder(cases["image_load.output"])
        single(embedded, cases["image_embed.output"], "image_embed")
        single(models.image_projector(cases["image_embed.output"]), cases["image_proj.output"], "image_proj")
        single(models.image_projector(embedder(embedder.blank(1))), cases["image_uncond.output"], "image_uncond")


def test_the_antialiasing_blur_acts_only_where_the_picture_shrinks():
    """Enlarging (the fixture's case) leaves the picture as it is; shrinking an axis blurs along it, and a flat
    picture stays flat (the kernel sums to 1, the reflected border adds nothing)."""
    x = torch.randn(1, 3, 64, 128, generator=torch.Generator().manual_seed(0))
    assert torch.equal(shrink_blur(x, (224, 224)), x)
    shrunk = shrink_blur(x, (32, 128))  # the height halves: sigma 0.5, 3 taps along it, the width untouched
    assert shrunk.shape == x.shape and not torch.allclose(shrunk, x)
    flat = torch.full((1, 3, 320, 512), 0.3)
    assert torch.allclose(shrink_blur(flat, (224, 224)), flat, atol=1e-6)


def test_full_size_preset_fits_the_official_layout():
    """Every key of the official checkpoint, with its shape, is placed in the preset's modules."""
    from vcraft.config import load_preset
    from vcraft.loaders.loading import build_models, place_checkpoint

    manifest = json.loads((reference_dir() / "manifests" / f"{VARIANT}.json").read_text())
    state = {k: torch.empty(v["shape"], device="meta") for k, v in manifest["keys"].items()}
    cfg = load_preset("vc1-i2v-512").model
    models = build_models(cfg, encoder=True)
    place_checkpoint(models, cfg, state, f"{VARIANT} manifest")  # strict: raises on any difference
    counts = manifest["param_counts"]
    assert sum(p.numel() for p in models.image_encoder.parameters()) == counts["image_encoder"]
    assert sum(p.numel() for p in models.image_projector.parameters()) == counts["image_proj"]
    assert sum(p.numel() for p in models.unet.parameters()) == counts["unet"]


# The command line with the fixture's original YAML (in this process; see tests/test_cli.py).

def i2v_args(*extra) -> list:
    from test_cli import small_video_args

    return [*small_video_args(VARIANT), "--format", "png", *extra]


@pytest.fixture(scope="module")
def from_the_picture(tmp_path_factory) -> Path:
    """The fixture's picture made into a video by the command (`--image`, seed 3), PNG frames in `a` and its sidecar
    `a.json`: made once for the two tests below, which only read it."""
    from test_cli import vcraft

    folder = tmp_path_factory.mktemp("i2v")
    result = vcraft("generate", "a red fox running through snow",
                    *i2v_args("--image", reference_dir() / "tiny" / VARIANT / "input.png", "--seed", 3),
                    "-o", folder / "a")
    assert result.returncode == 0, result.stderr
    return folder


def test_the_command_line_makes_a_video_from_the_picture_and_records_it(tmp_path, from_the_picture):
    from PIL import Image
    from test_cli import read_pngs, vcraft

    root = reference_dir() / "tiny" / VARIANT
    mirrored = tmp_path / "mirrored.png"
    Image.open(root / "input.png").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mirrored)
    result = vcraft("generate", "a red fox running through snow", *i2v_args("--image", mirrored, "--seed", 3),
                    "-o", tmp_path / "b")
    assert result.returncode == 0, result.stderr
    made = {"a": read_pngs(from_the_picture / "a"), "b": read_pngs(tmp_path / "b")}
    assert made["a"].shape == (8, 64, 128, 3)
    assert np.abs(made["a"].astype(int) - made["b"].astype(int)).mean() > 1.0  # the picture steers the video
    sidecar = json.loads((from_the_picture / "a.json").read_text())
    assert sidecar["image"] == str((root / "input.png").resolve())
    assert sidecar["image_sha256"] == hashlib.sha256((root / "input.png").read_bytes()).hexdigest()

    again = vcraft("generate", "--from", from_the_picture / "a.json", "-o", tmp_path / "again")
    assert again.returncode == 0, again.stderr
    assert np.array_equal(read_pngs(tmp_path / "again"), made["a"])


def test_a_prompt_file_row_names_its_picture_relative_to_the_file(tmp_path, from_the_picture):
    """The row's picture, named relative to the prompt file (not to the working folder), gives the video of the
    same picture given by --image (`from_the_picture`)."""
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
    assert np.array_equal(read_pngs(tmp_path / "out"), read_pngs(from_the_picture / "a"))


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
