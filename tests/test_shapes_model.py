"""The shipped default model: it is found with no options, is small, and follows its prompts, in long videos
too (the default command's browser-playable MP4: tests/test_batch.py).

No pixel changes: data/golden_videos.npz holds videos made on one CPU thread by commit 421f774, whose videos had
the same hashes as those of 169e98e, the code from before issue 21 restructured the generation path: the embedded
model's videos that the tests below read, two more, and two of a tiny official-format fixture. The embedded
model's videos other than "eta" were recorded again at the preset's own settings (12 steps instead of 25: half the
time, and the same videos that the prompt tests read) during issue 26, by code that still made the 25-step
recordings and every other one unchanged. All the embedded model's videos were recorded again with its weights
of issue 36 (phases 4-5 and the blend), by code that made the tiny fixture's recordings unchanged. The videos
made now must be the same, up to the rounding of another CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import one_cpu_thread
from reference import reference_dir

from vcraft.data.measure import measure, measure_colour, measure_motion, object_masks


def test_checkpoint_is_found_by_default_and_small():
    from vcraft import DEFAULT_PRESET
    from vcraft.config import load_preset
    from vcraft.loaders.weights import find_checkpoint

    assert DEFAULT_PRESET == "shapes"
    path = find_checkpoint(load_preset("shapes"))
    assert path.name == "model.safetensors" and path.stat().st_size <= 30 * 2**20


@pytest.fixture(scope="module")
def long_video(render):
    """40 frames: windows that each continue the last latent frames of the one before (`mask` mode, the
    preset's overlap and settings). Also one of the recorded videos below."""
    return render("a red circle moving left", seed=0, frames=40).astype(np.float32) / 255


@pytest.mark.slow
def test_a_long_video_keeps_its_object(long_video):
    assert long_video.shape == (40, 64, 64, 3)
    masks = object_masks(long_video)
    assert (masks.mean(axis=(1, 2)) > 0.005).all()
    assert all(measure_colour(frame[None], mask[None]) == "red" for frame, mask in zip(long_video, masks))
    assert [measure_motion(masks[i:i + 16]) for i in (0, 16, 24)] == ["left"] * 3  # across the joins too


@pytest.mark.slow
def test_the_joins_of_a_long_video_are_no_bigger_than_its_frame_steps(shapes_pipe, long_video):
    change = np.abs(np.diff(long_video, axis=0)).mean(axis=(1, 2, 3))  # change[i]: frame i -> i + 1
    joins = [start - 1 for start in range(16, 40, 16 - shapes_pipe.config.sampling.overlap)]
    # The mean over the joins, as scripts/check_long_video.py measures it (1.44x here). The largest single join of
    # this video is 1.91x since the preset guides only at t >= 600 (docs/embedded-model.md).
    assert change[joins].mean() <= 2 * np.median(change), change


@pytest.mark.slow
def test_a_prompt_that_changes_along_a_video_turns_its_object_with_no_jump(shapes_pipe):
    """Issue 36's schedule: "a red circle moving left", then "... moving up" from frame 32. Each 16-frame stretch
    shows its prompt's motion, and the change between frames 31 and 32 is no larger than usual (the measure of
    scripts/check_long_video.py's joins; 1.15x the median here)."""
    with one_cpu_thread():
        video = shapes_pipe(["a red circle moving left", "a red circle moving up"], at=[0, 32], frames=48, seed=0)
    video = video.astype(np.float32) / 255
    masks = object_masks(video)
    assert [measure_motion(masks[i:i + 16]) for i in (0, 16, 32)] == ["left", "left", "up"]
    change = np.abs(np.diff(video, axis=0)).mean(axis=(1, 2, 3))  # change[i]: frame i -> i + 1
    assert change[31] <= 1.5 * np.median(np.delete(change, 31)), change


@pytest.mark.parametrize("prompt, colour, motion", [
    ("a red circle moving left", "red", "left"),  # a held-out combination
    ("The blue square moves up.", "blue", "up"),
    ("a green triangle getting bigger", "green", "growing"),
])
def test_the_video_follows_the_prompt(render, prompt, colour, motion):
    """Read back from the decoded pixels: the object has the prompted colour and moves the prompted way."""
    seen = measure(render(prompt, seed=0).astype(np.float32) / 255)
    assert (seen["colour"], seen["motion"]) == (colour, motion), seen


@pytest.mark.slow
def test_a_generated_video_is_continued_keeping_its_colour_and_motion(render):
    """16 generated frames continued to 32 (`--continue`, the model's mask conditioning): the given frames come
    back unchanged, the new ones show the same object moving the same way, and the join is no jump. Two windows of
    8 new frames: the first continues the given video, the second its own frames (windows continuing windows over
    longer videos: test_a_long_video_keeps_its_object)."""
    prompt = "a red circle moving left"
    start = render(prompt, seed=0)  # also a video of test_the_video_follows_the_prompt
    video = render(prompt, continues=start, frames=16, seed=1)
    assert start.shape == (16, 64, 64, 3) and video.shape == (32, 64, 64, 3)
    assert np.array_equal(video[:16], start)
    new = video[16:].astype(np.float32) / 255
    assert measure(new) == measure(start.astype(np.float32) / 255) == {"colour": "red", "shape": "circle",
                                                                         "motion": "left"}
    changes = np.abs(np.diff(video.astype(np.float32), axis=0)).mean(axis=(1, 2, 3))
    assert changes[15] <= 2 * np.median(changes[16:]), (changes[15], np.median(changes[16:]))


# name: (model, prompt, settings, frames' shape); the frames themselves are in data/golden_videos.npz
GOLDEN = {
    "40 frames": ("shapes", "a red circle moving left", {"seed": 0, "frames": 40}, (40, 64, 64, 3)),
    "prompt 1": ("shapes", "a red circle moving left", {"seed": 0}, (16, 64, 64, 3)),
    "prompt 2": ("shapes", "The blue square moves up.", {"seed": 0}, (16, 64, 64, 3)),
    "prompt 3": ("shapes", "a green triangle getting bigger", {"seed": 0}, (16, 64, 64, 3)),
    "negative": ("shapes", "a green square growing", {"seed": 6, "negative": "a green square shrinking"},
                 (16, 64, 64, 3)),
    "eta": ("shapes", "a white circle moving right",
            {"seed": 7, "eta": 0.5, "guidance_min_t": 0, "frames": 8, "steps": 6}, (8, 64, 64, 3)),
    "tiny": ("tiny", "a red fox running through snow",
             {"seed": 3, "frames": 8, "height": 64, "width": 128, "steps": 10, "guidance": 12.0, "eta": 0.0,
              "fps": 8}, (8, 64, 128, 3)),
    "tiny long": ("tiny", "a red fox running through snow",
                  {"seed": 4, "frames": 24, "height": 64, "width": 128, "steps": 5, "guidance": 12.0, "eta": 1.0,
                   "fps": 8}, (24, 64, 128, 3)),
}


@pytest.fixture(scope="module")
def tiny_pipe():
    from vcraft import TextToVideo

    root = reference_dir() / "tiny" / "vc2_512"
    return TextToVideo.from_pretrained(str(root / "config.yaml"), root / "model.ckpt", device="cpu")


@pytest.mark.parametrize("case", [pytest.param(case, marks=pytest.mark.slow) if case == "40 frames" else case
                                  for case in GOLDEN])  # the long one is also the long-video tests' video
def test_the_pixels_are_the_recorded_ones(request, render, case):
    model, prompt, settings, shape = GOLDEN[case]
    if model == "tiny":
        with one_cpu_thread():
            video = request.getfixturevalue("tiny_pipe")(prompt, **settings)
    else:
        video = render(prompt, **settings)
    assert video.shape == shape and video.dtype == np.uint8
    with np.load(Path(__file__).parent / "data" / "golden_videos.npz") as recorded:
        change = np.abs(video.astype(np.int16) - recorded[case])
    # Another CPU rounds float32 sums in another order, which moves a few pixels by a level; any change of the
    # method (one step more, another seed) moves some by 4 or more (docs/architecture.md, "Tests").
    assert change.max() <= 2 and change.mean() <= 0.01, (change.max(), change.mean())
