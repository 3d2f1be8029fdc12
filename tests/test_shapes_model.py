"""The shipped default model: it is found with no options, is small, and follows its prompts, in long videos
too (the default command's browser-playable MP4: tests/test_batch.py)."""

from __future__ import annotations

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


@pytest.fixture(scope="module")
def long_video(render):
    """40 frames: windows that each continue the last latent frames of the one before (`mask` mode, the
    preset's overlap). Also one of tests/test_golden.py's videos."""
    return render("a red circle moving left", seed=0, frames=40).astype(np.float32) / 255


def test_a_long_video_keeps_its_object(long_video):
    assert long_video.shape == (40, 64, 64, 3)
    masks = object_masks(long_video)
    assert (masks.mean(axis=(1, 2)) > 0.005).all()
    assert all(measure_colour(frame[None], mask[None]) == "red" for frame, mask in zip(long_video, masks))
    assert [measure_motion(masks[i:i + 16]) for i in (0, 16, 24)] == ["left"] * 3  # across the joins too


def test_the_joins_of_a_long_video_are_no_bigger_than_its_frame_steps(shapes_pipe, long_video):
    change = np.abs(np.diff(long_video, axis=0)).mean(axis=(1, 2, 3))  # change[i]: frame i -> i + 1
    joins = [start - 1 for start in range(16, 40, 16 - shapes_pipe.config.sampling.overlap)]
    # The mean over the joins, as scripts/check_long_video.py measures it. The largest single join of this video
    # is 2.03x since the preset guides only at t >= 600 (docs/embedded-model.md).
    assert change[joins].mean() <= 2 * np.median(change), change


@pytest.mark.parametrize("prompt, colour, motion", [
    ("a red circle moving left", "red", "left"),  # a held-out combination
    ("The blue square moves up.", "blue", "up"),
    ("a green triangle getting bigger", "green", "growing"),
])
def test_the_video_follows_the_prompt(render, prompt, colour, motion):
    """Read back from the decoded pixels: the object has the prompted colour and moves the prompted way."""
    seen = measure(render(prompt, seed=0).astype(np.float32) / 255)
    assert (seen["colour"], seen["motion"]) == (colour, motion), seen
