"""The shipped default model: it loads with no options and makes videos that follow the prompt, judged
from the decoded pixels (colour of the object, direction it moves)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from vcraft.data.measure import measure

PROMPTS = [  # both combinations are held out of training; the command-line test below uses a seen one
    ("a red circle moving left", "red", "left"),
    ("The blue triangle moves down.", "blue", "down"),
]


@pytest.fixture(scope="module")
def pipe():
    from vcraft import TextToVideo

    return TextToVideo.from_pretrained(device="cpu")


@pytest.mark.parametrize("prompt,colour,motion", PROMPTS)
def test_video_follows_the_prompt(pipe, prompt, colour, motion):
    video = pipe(prompt, seed=0)
    assert video.shape == (16, 64, 64, 3) and video.dtype == np.uint8
    seen = measure(video.astype(np.float32) / 255)
    assert (seen["colour"], seen["motion"]) == (colour, motion), seen


def test_continues_given_frames(pipe):
    """A frame-conditioned model keeps the given frames and goes on the same way."""
    import torch

    from vcraft.data.shapes import Scene, render

    clip = render(Scene("green", "square", "right"), 16, 64, np.random.default_rng(5))
    video = torch.from_numpy(clip).permute(3, 0, 1, 2)[None] * 2 - 1
    given = pipe.autoencoder.encode(video[:, :, :8])
    cond = pipe.encode_prompts(["a green square moving right"])
    uncond = pipe.encode_prompts([""])
    s = pipe.config.sampling
    latents = pipe.sample(cond, uncond, [0], 16, 64, 64, s.steps, s.guidance, s.eta, s.fps, given=given)
    frames = np.concatenate([c.numpy() for c in pipe.decode(latents)], axis=1)[0].astype(np.float32) / 255
    assert np.abs(frames[:8] - clip[:8]).mean() < 0.03  # the given part is kept
    later = measure(frames[8:])
    assert (later["colour"], later["motion"]) == ("green", "right"), later


def test_default_command_writes_a_browser_mp4(tmp_path):
    out = tmp_path / "circle.mp4"
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
    frames = iio.imread(out, index=None)
    assert frames.shape == (16, 64, 64, 3)
    seen = measure(frames.astype(np.float32) / 255)
    assert (seen["colour"], seen["motion"]) == ("yellow", "up"), seen
