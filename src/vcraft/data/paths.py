"""Paths that motion words do not say, for the embedded model's control adapter: circles, zigzags, curves, stops
and changes of speed. A training pair is a control video (a bright thing of any shape and grey on a dark
background, moving along a path) and the clip the model should make from it (the caption's object on the same
path). Everything is drawn from one seed; paths stay inside the frame (no wrap-around).
"""

from __future__ import annotations

import numpy as np

from vcraft.data.shapes import COLOURS, SHAPES, draw

PATHS = ("circle", "zigzag", "curve", "stop_and_go", "speed_change", "still")
MARGIN = 0.22  # of the frame: centres stay this far from the edges, so the object is whole in every frame


def _line(rng: np.random.Generator, t: np.ndarray, size: int, progress: np.ndarray) -> np.ndarray:
    """A straight path through the middle of the frame in a random direction, at `progress` (0..1) along it."""
    angle = rng.uniform(0, 2 * np.pi)
    length = rng.uniform(0.35, 0.5) * size
    direction = np.array([np.cos(angle), np.sin(angle)])
    return size / 2 + (progress[:, None] - 0.5) * length * direction + rng.uniform(-0.05, 0.05, 2) * size


def path(kind: str, frames: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Centres `[frames, 2]` (x, y) in pixels of one path of `kind`."""
    t = np.arange(frames) / max(frames - 1, 1)
    if kind == "circle":
        radius = rng.uniform(0.12, 0.2) * size
        turns = rng.uniform(0.6, 1.0) * rng.choice([-1, 1])
        phase = rng.uniform(0, 2 * np.pi) + 2 * np.pi * turns * t
        centre = size / 2 + rng.uniform(-0.04, 0.04, 2) * size
        points = centre + radius * np.stack([np.cos(phase), np.sin(phase)], axis=1)
    elif kind == "zigzag":
        points = _line(rng, t, size, t)
        normal = np.diff(points, axis=0).mean(axis=0)[::-1] * [1, -1]
        normal /= np.linalg.norm(normal) + 1e-9
        period = rng.uniform(0.3, 0.6)
        wave = 2 * np.abs(((t / period + rng.uniform()) % 1) - 0.5) * 2 - 1  # a triangle wave in [-1, 1]
        points = points + rng.uniform(0.08, 0.14) * size * wave[:, None] * normal
    elif kind == "curve":
        start, end = (size / 2 + rng.uniform(-0.28, 0.28, (2, 2)) * size)
        bend = size / 2 + rng.uniform(-0.3, 0.3, 2) * size
        points = (1 - t)[:, None] ** 2 * start + 2 * (t * (1 - t))[:, None] * bend + t[:, None] ** 2 * end
    elif kind == "stop_and_go":
        stop, length = rng.uniform(0.25, 0.5), rng.uniform(0.2, 0.4)
        moving = np.clip(t, 0, stop) + np.clip(t - stop - length, 0, None)
        points = _line(rng, t, size, moving / moving[-1])
    elif kind == "speed_change":
        power = rng.choice([rng.uniform(0.35, 0.6), rng.uniform(1.7, 2.8)])  # slowing down, or speeding up
        points = _line(rng, t, size, t ** power)
    else:  # still
        points = np.repeat(size / 2 + rng.uniform(-0.2, 0.2, (1, 2)) * size, frames, axis=0)
    return np.clip(points, MARGIN * size, (1 - MARGIN) * size)


def pair(seed: int, frames: int = 16, size: int = 64) -> tuple[np.ndarray, np.ndarray, str, dict]:
    """(control video, target clip, caption, what was drawn) from one seed; videos float `[T, H, W, 3]` in [0, 1].
    The caption names the target's colour and shape, never a motion."""
    rng = np.random.default_rng(seed)
    kind = PATHS[rng.integers(len(PATHS))]
    centres = path(kind, frames, size, rng)
    cx, cy = centres[:, 0, None, None], centres[:, 1, None, None]
    grey = rng.uniform(0.6, 1.0)
    control = draw(SHAPES[rng.integers(3)], np.full(3, grey), cx, cy,
                   np.full_like(cx, rng.uniform(0.1, 0.18) * size), rng.uniform(0.0, 0.12), size)
    colour, shape = list(COLOURS)[rng.integers(len(COLOURS))], SHAPES[rng.integers(3)]
    target = draw(shape, np.array(COLOURS[colour]), cx, cy, np.full_like(cx, rng.uniform(0.13, 0.17) * size),
                  rng.uniform(0.0, 0.1), size)
    article = "an" if colour[0] in "aeiou" else "a"
    text = rng.choice([f"{article} {colour} {shape}", f"the {colour} {shape}", f"{article} {colour} {shape} on a "
                       "black background"])
    return control, target, str(text), {"path": kind, "colour": colour, "shape": shape, "centres": centres}
