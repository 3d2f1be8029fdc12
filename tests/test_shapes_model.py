"""The shipped default model: it is found with no options, is small, and the default command turns a prompt
into a browser-playable MP4 with one object on a dark background."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from vcraft.data.measure import measure, measure_colour, measure_motion, object_masks


def test_checkpoint_is_found_by_default_and_small():
    from vcraft import DEFAULT_PRESET
    from vcraft.checkpoints import find_checkpoint
    from vcraft.config import load_preset

    assert DEFAULT_PRESET == "shapes"
    path = find_checkpoint(load_preset("shapes"))
    assert path.name == "model.safetensors" and path.stat().st_size <= 30 * 2**20


def test_default_command_writes_a_browser_mp4(tmp_path):
    out = tmp_path / "square.mp4"
    result = subprocess.run([sys.executable, "-m", "vcraft", "generate", "a yellow square moving up", "--seed", "1",
                             "-o", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out)
    import imageio.v3 as iio
    import imageio_ffmpeg

    probe = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(out)], capture_output=True,
                           text=True)
    stream = next(line for line in probe.stderr.splitlines() if "Video:" in line)
    assert "h264" in stream and "yuv420p" in stream, stream  # what browsers play
    frames = iio.imread(out, index=None).astype(np.float32) / 255
    assert frames.shape == (16, 64, 64, 3)
    covered = object_masks(frames).mean(axis=(1, 2))
    assert (np.median(frames, axis=(1, 2)).max() < 0.2) and (0.005 < covered).all() and (covered < 0.5).all(), covered


@pytest.fixture(scope="module")
def pipe():
    from vcraft import TextToVideo

    return TextToVideo.from_pretrained(device="cpu")


@pytest.fixture(scope="module")
def long_video(pipe):
    """40 frames: windows that each continue the last latent frames of the one before (`mask` mode, the
    preset's overlap)."""
    return pipe("a red circle moving left", seed=0, frames=40).astype(np.float32) / 255


def test_a_long_video_keeps_its_object(long_video):
    assert long_video.shape == (40, 64, 64, 3)
    masks = object_masks(long_video)
    assert (masks.mean(axis=(1, 2)) > 0.005).all()
    assert all(measure_colour(frame[None], mask[None]) == "red" for frame, mask in zip(long_video, masks))
    assert [measure_motion(masks[i:i + 16]) for i in (0, 16, 24)] == ["left"] * 3  # across the joins too


def test_the_joins_of_a_long_video_are_no_bigger_than_its_frame_steps(pipe, long_video):
    change = np.abs(np.diff(long_video, axis=0)).mean(axis=(1, 2, 3))  # change[i]: frame i -> i + 1
    joins = [start - 1 for start in range(16, 40, 16 - pipe.config.sampling.overlap)]
    # The mean over the joins, as scripts/check_long_video.py measures it. The largest single join of this video
    # is 2.03x since the preset guides only at t >= 600 (docs/embedded-model.md).
    assert change[joins].mean() <= 2 * np.median(change), change


@pytest.mark.parametrize("prompt, colour, motion", [
    ("a red circle moving left", "red", "left"),  # a held-out combination
    ("The blue square moves up.", "blue", "up"),
    ("a green triangle getting bigger", "green", "growing"),
])
def test_the_video_follows_the_prompt(pipe, prompt, colour, motion):
    """Read back from the decoded pixels: the object has the prompted colour and moves the prompted way."""
    seen = measure(pipe(prompt, seed=0).astype(np.float32) / 255)
    assert (seen["colour"], seen["motion"]) == (colour, motion), seen
