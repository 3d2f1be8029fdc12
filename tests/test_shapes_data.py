"""The synthetic shapes data: deterministic, captions that say what is drawn, a held-out split."""

from __future__ import annotations

import re

import numpy as np

from vcraft.data.measure import measure
from vcraft.data.shapes import ALL_SCENES, COLOURS, HELD_OUT_SCENES, MOTIONS, SHAPES, TRAIN_SCENES, sample


def test_same_seed_same_video_and_caption():
    a, b, c = sample(11), sample(11), sample(12)
    assert np.array_equal(a[0], b[0]) and a[1] == b[1] and a[2] == b[2]
    assert not np.array_equal(a[0], c[0])
    assert a[0].shape == (16, 64, 64, 3) and a[0].dtype == np.float32
    assert 0.0 <= a[0].min() and a[0].max() <= 1.0


def test_captions_describe_what_is_drawn():
    """Read colour, shape and motion back from the pixels and from the caption; they must agree."""
    pattern = re.compile(r"^(a|an|the) (\w+) (\w+) (.+?)( on a black background)?\.?$")
    words = {"moving left": "left", "moving to the left": "left", "moves left": "left", "sliding left": "left",
             "moving right": "right", "moving to the right": "right", "moves right": "right",
             "sliding right": "right", "moving up": "up", "moves up": "up", "sliding up": "up",
             "moving down": "down", "moves down": "down", "sliding down": "down", "growing": "growing",
             "getting bigger": "growing", "shrinking": "shrinking", "getting smaller": "shrinking"}
    for seed in range(120):
        video, text, scene = sample(seed, held_out=seed % 3 == 0)
        match = pattern.match(text.lower())
        assert match, text
        article, colour, shape, phrase = match.group(1, 2, 3, 4)
        assert (colour, shape, words[phrase]) == (scene.colour, scene.shape, scene.motion), text
        assert article != "a" or colour[0] not in "aeiou", text
        seen = measure(video)
        assert seen == {"colour": scene.colour, "shape": scene.shape, "motion": scene.motion}, (seed, text)


def test_held_out_split():
    assert len(ALL_SCENES) == len(COLOURS) * len(SHAPES) * len(MOTIONS)
    assert len(HELD_OUT_SCENES) / len(ALL_SCENES) >= 0.15
    assert not set(HELD_OUT_SCENES) & set(TRAIN_SCENES)
    for name, values in (("colour", COLOURS), ("shape", SHAPES), ("motion", MOTIONS)):
        assert {getattr(s, name) for s in TRAIN_SCENES} == set(values)
    assert all(sample(seed)[2] in TRAIN_SCENES for seed in range(50))
    assert all(sample(seed, held_out=True)[2] in HELD_OUT_SCENES for seed in range(50))


def test_clips_that_turn_go_one_way_before_their_turn_and_the_caption_s_way_after():
    """What a prompt changing along a video is trained on: both directions training combinations, a right-angle turn
    where the clip says, the path continuing from where the object got to (no jump at the turn)."""
    from vcraft.data.shapes import Scene, sample_turn

    turns = set()
    for seed in range(40):
        video, text, scene, before = sample_turn(seed)
        assert 1 <= before <= 8 and scene in TRAIN_SCENES and scene.motion in ("left", "right", "up", "down")
        assert scene.colour in text.lower() and scene.shape in text.lower()
        after = measure(video[before - 1:])
        assert after == {"colour": scene.colour, "shape": scene.shape, "motion": scene.motion}, (seed, text)
        if before >= 3:
            first = measure(video[:before])["motion"]
            assert Scene(scene.colour, scene.shape, first) in TRAIN_SCENES, seed
            assert (first in ("left", "right")) != (scene.motion in ("left", "right")), seed  # a right angle
            turns.add((first, scene.motion))
        steps = np.abs(np.diff(video, axis=0)).mean(axis=(1, 2, 3))
        assert steps[before - 1] <= 1.5 * np.median(steps), (seed, steps)  # the turn is an ordinary step
    assert len(turns) >= 6  # most of the 8 right-angle turns are drawn


def test_a_scaled_outline_is_the_same_object_larger_on_the_same_path():
    """`render(..., scale=)` (the outline LoRA's clips at other sizes): the same draws, the object's area scale**2
    times as large, still an outline of the same share, its centre where it was, and read back as the same scene."""
    from vcraft.data.measure import (
        centres,
        hollowness,
        measure_colour,
        measure_motion,
        measure_shape,
        object_masks,
        silhouettes,
    )
    from vcraft.data.shapes import Scene, render

    for scene in (Scene("red", "square", "left"), Scene("cyan", "triangle", "up"), Scene("blue", "circle", "right")):
        small, large = (render(scene, 16, 64, np.random.default_rng(5), outline=True, scale=s) for s in (1.0, 1.4))
        masks = [object_masks(v) for v in (small, large)]
        filled = [silhouettes(m) for m in masks]  # an outline's size, shape and motion are read from its silhouette
        ratio = filled[1].sum() / filled[0].sum()
        assert 1.4 ** 2 * 0.9 < ratio < 1.4 ** 2 * 1.1, (scene, ratio)
        assert abs(hollowness(masks[1]) - hollowness(masks[0])) < 0.05, scene
        middle = slice(4, 12)  # frames where neither object wraps around the edge
        # within 1.5 px: each ring's mask is cut on the pixel grid, which moves a mask's centre by up to about 1 px
        assert np.abs(centres(masks[1])[middle] - centres(masks[0])[middle]).max() < 1.5, scene
        seen = (measure_colour(large, masks[1]), measure_shape(filled[1]), measure_motion(filled[1]))
        assert seen == (scene.colour, scene.shape, scene.motion), scene


def test_a_ring_is_closed_until_a_slit_opens_one_side():
    """`measure.closed_share`: every frame of a drawn outline encloses its hole; a filled shape has none, and a slit
    three pixels high through the ring's right side opens it."""
    from vcraft.data.measure import closed_share, object_masks
    from vcraft.data.shapes import Scene, render

    for scene in (Scene("red", "square", "left"), Scene("cyan", "triangle", "up"), Scene("blue", "circle", "down")):
        ring, filled = (object_masks(render(scene, 16, 64, np.random.default_rng(3), outline=o)) for o in (True, False))
        assert closed_share(ring) == 1.0 and closed_share(filled) == 0.0, scene
        slit = ring.copy()
        for frame in slit:
            ys, xs = np.nonzero(frame)
            y, x = int(ys.mean()), int(xs.mean())
            frame[y - 1:y + 2, x:] = False
        assert closed_share(slit) == 0.0, scene
