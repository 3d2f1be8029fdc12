"""Synthetic captioned videos: one coloured shape on a dark background, moving or changing size.

Everything is drawn from one seed, so a (seed, frames, size) triple always gives the same video and
caption. Objects stay near the centre of the frame: those that move cross it, those that change size sit
on it. Moving objects that reach an edge wrap around it (leaving on one side, coming back on the
other), so the direction in the caption holds in every frame. Edges are anti-aliased from a signed distance.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import numpy as np

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.92, 0.12, 0.10), "orange": (0.98, 0.55, 0.08), "yellow": (0.95, 0.92, 0.12),
    "green": (0.15, 0.80, 0.20), "cyan": (0.10, 0.85, 0.90), "blue": (0.15, 0.30, 0.95),
    "purple": (0.62, 0.20, 0.85), "white": (0.95, 0.95, 0.95),
}
COLOURS_INDEX = {name: i for i, name in enumerate(COLOURS)}
SHAPES = ("circle", "square", "triangle")
MOTIONS = ("left", "right", "up", "down", "growing", "shrinking")

_PHRASES = {
    "left": ("moving left", "moving to the left", "moves left", "sliding left"),
    "right": ("moving right", "moving to the right", "moves right", "sliding right"),
    "up": ("moving up", "moves up", "sliding up"),
    "down": ("moving down", "moves down", "sliding down"),
    "growing": ("growing", "getting bigger"),
    "shrinking": ("shrinking", "getting smaller"),
}


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    motion: str


def is_held_out(scene: Scene) -> bool:
    """24 of the 144 combinations (16.7%) never appear in training: for every (colour, shape) pair one
    motion, chosen so that every colour, shape and motion still appears in training with others."""
    c, s, m = COLOURS_INDEX[scene.colour], SHAPES.index(scene.shape), MOTIONS.index(scene.motion)
    return (c + 2 * s) % len(MOTIONS) == m


def is_outline_held_out(scene: Scene) -> bool:
    """24 of the 144 combinations that the "outline style" LoRA's clips never show (another sixth than
    `is_held_out`'s), on which it is evaluated."""
    c, s, m = COLOURS_INDEX[scene.colour], SHAPES.index(scene.shape), MOTIONS.index(scene.motion)
    return (c + s + 2 * m) % len(MOTIONS) == 1


ALL_SCENES = [Scene(c, s, m) for c, s, m in product(COLOURS, SHAPES, MOTIONS)]
TRAIN_SCENES = [s for s in ALL_SCENES if not is_held_out(s)]
HELD_OUT_SCENES = [s for s in ALL_SCENES if is_held_out(s)]


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """One of the accepted phrasings, with a random article, capitalisation, suffix and period."""
    article = rng.choice(["the", "an" if scene.colour[0] in "aeiou" else "a"])
    text = f"{article} {scene.colour} {scene.shape} {rng.choice(_PHRASES[scene.motion])}"
    if rng.random() < 0.3:
        text += " on a black background"
    style = rng.integers(4)
    text = (text, text.capitalize(), text.title(), text.upper())[style]
    return text + "." if rng.random() < 0.5 else text


# The distance from the centre to the nearest edge, in units of the "radius" `_sdf` takes.
INRADIUS = {"circle": 1.0, "square": 0.85, "triangle": 1.2 / np.sqrt(3)}
# An outline's thickness over the inradius: about 3 pixels at the default sizes, a sixth of a square's side. The
# autoencoder blurs thinner rings into the background more (0.3: a quarter lost their colour; docs/embedded-model.md).
RING = 0.35


def _sdf(shape: str, px: np.ndarray, py: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Signed distance in pixels to a shape of "radius" r centred at the origin (py points up)."""
    if shape == "circle":
        return np.hypot(px, py) - r
    if shape == "square":
        half = 0.85 * r
        qx, qy = np.abs(px) - half, np.abs(py) - half
        return np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0)
    # Equilateral triangle pointing up, side 2 * 1.2 r (the usual closed-form distance).
    k, half = np.sqrt(3.0), 1.2 * r
    x, y = np.abs(px) - half, py + half / k
    fold = x + k * y > 0
    x, y = np.where(fold, (x - k * y) / 2, x), np.where(fold, (-k * x - y) / 2, y)
    x = x - np.clip(x, -2 * half, 0)
    return -np.hypot(x, y) * np.sign(y)


DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


def render(scene: Scene, frames: int, size: int, rng: np.random.Generator, outline: bool = False,
           turn: tuple[int, str] | None = None, scale: float = 1.0) -> np.ndarray:
    """Float video `[frames, size, size, 3]` in [0, 1]; with `outline`, the shape drawn as a ring of its edge (the
    "outline style" of the LoRA example), the same share of every shape's silhouette, about 37%, background. With
    `turn = (k, direction)`, a moving object goes `scene.motion` until frame k - 1 and `direction` from there on,
    turning at the frame's centre (the clips a prompt that changes along a video is trained on). `scale`: the
    object that many times its usual size (its outline too), on the same path."""
    t = np.arange(frames, dtype=np.float64)[:, None, None]
    if scene.motion in ("growing", "shrinking"):
        small, large = rng.uniform(0.07, 0.10) * size, rng.uniform(0.22, 0.27) * size
        start, end = (small, large) if scene.motion == "growing" else (large, small)
        radius = start + (end - start) * t / max(frames - 1, 1)
        cx = np.full_like(t, rng.uniform(0.46, 0.54) * size)
        cy = np.full_like(t, rng.uniform(0.46, 0.54) * size)
    else:
        radius = np.full_like(t, rng.uniform(0.13, 0.17) * size)
        speed = rng.uniform(0.03, 0.036) * size
        # The path's midpoint is near the frame's centre, and speed and size vary little. At the noisiest steps
        # a model can only predict a caption's mean clip, and the motion in that mean is what starts a sample
        # moving; a small model also draws several objects where the mean is a wide smear. Paths anywhere gave a
        # mean that hardly moves, and models trained on them made no motion (docs/notes.md).
        mid = rng.uniform(0.46, 0.54, size=2) * size
        pivot, then = ((frames - 1) / 2, scene.motion) if turn is None else (turn[0] - 1, turn[1])
        along = (t - pivot) * speed
        dx, dy = (np.where(t <= pivot, DIRECTIONS[scene.motion][i], DIRECTIONS[then][i]) for i in (0, 1))
        cx, cy = mid[0] + dx * along, mid[1] + dy * along
    radius = radius * scale
    return draw(scene.shape, np.array(COLOURS[scene.colour]), cx, cy, radius, rng.uniform(0.0, 0.1), size,
                RING * INRADIUS[scene.shape] * radius if outline else None)


def draw(shape: str, colour: np.ndarray, cx: np.ndarray, cy: np.ndarray, radius: np.ndarray, background: float,
         size: int, ring: np.ndarray | None = None) -> np.ndarray:
    """Float video `[T, size, size, 3]`: one shape of `colour` centred at (cx, cy) with `radius`, each `[T, 1, 1]`
    in pixels, on a flat background; filled, or with `ring` only its edge, that many pixels thick."""
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    # Wrap-around: the nearest copy of the centre, one frame width away at most.
    px = (xs[None] - cx + size / 2) % size - size / 2
    py = (ys[None] - cy + size / 2) % size - size / 2
    distance = _sdf(shape, px, -py, radius)
    alpha = np.clip(0.5 - distance, 0.0, 1.0)
    if ring is not None:
        alpha = alpha * np.clip(0.5 + distance + ring, 0.0, 1.0)
    alpha = alpha[..., None]
    return (background * (1 - alpha) + colour * alpha).astype(np.float32)


def sample(seed: int, frames: int = 16, size: int = 64, held_out: bool = False) -> tuple[np.ndarray, str, Scene]:
    """A (video, caption, scene) triple from the training combinations (or the held-out ones)."""
    rng = np.random.default_rng(seed)
    scenes = HELD_OUT_SCENES if held_out else TRAIN_SCENES
    scene = scenes[rng.integers(len(scenes))]
    return render(scene, frames, size, rng), caption(scene, rng), scene


def sample_turn(seed: int, frames: int = 16, size: int = 64, most_before: int = 8
                ) -> tuple[np.ndarray, str, Scene, int]:
    """A (video, caption, scene, k) quadruple: an object of a training combination moving one way for its first k
    frames (1 to `most_before`), then at a right angle, the caption and scene those of the new direction (also a
    training combination)."""
    rng = np.random.default_rng(seed)
    moving = [s for s in TRAIN_SCENES if s.motion in DIRECTIONS]
    before = moving[rng.integers(len(moving))]
    # right angles only: with reversals among the turns, the model reversed where a prompt asked it to turn
    (bx, by) = DIRECTIONS[before.motion]
    afters = [Scene(before.colour, before.shape, m) for m, (x, y) in DIRECTIONS.items() if x * bx + y * by == 0]
    afters = [s for s in afters if s in TRAIN_SCENES]
    after = afters[rng.integers(len(afters))]
    k = int(rng.integers(1, most_before + 1))
    return render(before, frames, size, rng, turn=(k, after.motion)), caption(after, rng), after, k
