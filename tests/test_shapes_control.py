"""The embedded model's control adapter, out of the box: a bright thing moving along a path that no motion word says
(a zigzag) makes the prompt's object follow it, read back from the decoded pixels."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vcraft.data.measure import centres, measure_colour, object_masks
from vcraft.data.shapes import draw


def zigzag() -> tuple[np.ndarray, np.ndarray]:
    """A white disc going right while it zigzags up and down (period 8 frames), uint8 `[16, 64, 64, 3]`, and its
    centres `[16, 2]`."""
    t = np.arange(16)
    x = 18 + 28 * t / 15
    y = 32 + 10 * (2 * np.abs((t / 8 + 0.25) % 1 - 0.5) * 2 - 1)
    video = draw("circle", np.full(3, 0.9), x[:, None, None], y[:, None, None], np.full((16, 1, 1), 8.0), 0.05, 64)
    return np.round(video * 255).astype(np.uint8), np.stack([x, y], axis=1)


def centres_of(video: np.ndarray) -> np.ndarray:
    return centres(object_masks(video / 255.0))


@pytest.fixture(scope="module")
def controlled(render):
    control, path = zigzag()
    return render("a red square", control_video=control, seed=3), path


def test_a_zigzag_control_video_gives_a_zigzag_path(controlled):
    video, path = controlled
    found = centres_of(video)
    error = np.hypot(*(found - path).T)
    assert np.nanmean(error) <= 3.0, error  # pixels of the 64x64 frame, frame by frame
    turns = np.flatnonzero(np.diff(np.sign(np.diff(found[:, 1]))))  # where the vertical motion turns round
    assert len(turns) >= 3, found[:, 1]
    assert measure_colour(video / 255.0, object_masks(video / 255.0)) == "red"


@pytest.mark.slow
def test_without_the_control_video_the_object_does_not_follow_the_path(render, controlled):
    video, path = controlled
    plain = render("a red square", seed=3)
    error = lambda made: np.nanmean(np.hypot(*(centres_of(made) - path).T))  # noqa: E731
    assert error(plain) > 2 * error(video)


@pytest.mark.slow
def test_the_command_line_follows_a_control_video_with_no_download(tmp_path):
    import imageio.v3 as iio

    from vcraft.app.cli import run

    control, path = zigzag()
    iio.imwrite(tmp_path / "zigzag.mp4", control, fps=8, codec="libx264", macro_block_size=1)
    out = tmp_path / "square.mp4"
    assert run(["generate", "a red square", "--control-video", str(tmp_path / "zigzag.mp4"), "--seed", "3",
                "-o", str(out), "-q"]) == 0
    recorded = json.loads((tmp_path / "square.json").read_text())
    assert recorded["control_video"] == str((tmp_path / "zigzag.mp4").resolve()) and recorded["model"] == "shapes"
    found = centres_of(iio.imread(out))
    assert np.nanmean(np.hypot(*(found - path).T)) <= 3.5


@pytest.mark.slow
def test_the_recipe_trains_an_adapter_resumes_it_bit_for_bit_and_the_file_loads(tmp_path):
    from safetensors.torch import load_file

    from vcraft import TextToVideo
    from vcraft.config import apply_overrides, load_preset
    from vcraft.loaders.weights import find_checkpoint
    from vcraft.train.control import train_control

    # 4 pairs (drawn and encoded once per run folder): the 4 steps of 2 draw from them 8 times.
    cfg = apply_overrides(load_preset("shapes"), ["train.control.pairs=4", "train.control.steps=4",
                                                  "train.control.batch_size=2", "train.checkpoint_every=2"])
    ckpt, quiet = find_checkpoint(cfg), lambda _: None
    assert train_control(cfg, ckpt, tmp_path / "stopped", quiet, stop_after=2) is None
    resumed = train_control(cfg, ckpt, tmp_path / "stopped", quiet)
    straight = train_control(cfg, ckpt, tmp_path / "straight", quiet)
    a, b = load_file(resumed), load_file(straight)
    assert a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    pipe = TextToVideo.from_pretrained("shapes", device="cpu", adapter=resumed)
    assert pipe(pipe.settings("a red square", control_video=zigzag()[0], steps=2)).shape == (16, 64, 64, 3)
