"""Read back from pixels what a shapes video shows: the object's colour, its shape and its motion.

Used to check the data generator and to score generated videos, so it assumes only what the data
promises: one object, brighter or more saturated than a dark, flat background.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from vcraft.data.shapes import COLOURS

ATTRIBUTES = ("colour", "shape", "motion")  # what measure() reads back, as named in a Scene


def object_masks(video: np.ndarray, threshold: float = 0.25) -> np.ndarray:
    """Boolean `[T, H, W]`: pixels that differ from the frame's background (its median colour)."""
    background = np.median(video.reshape(len(video), -1, 3), axis=1)[:, None, None, :]
    return np.abs(video - background).max(axis=-1) > threshold


def measure_colour(video: np.ndarray, masks: np.ndarray) -> str | None:
    if not masks.any():
        return None
    mean = video[masks].mean(axis=0)
    return min(COLOURS, key=lambda name: float(np.sum((np.array(COLOURS[name]) - mean) ** 2)))


def _circular_centre(mask: np.ndarray, axis: int) -> float:
    """Centre of mass along one axis on a circle, so an object split by the wrap-around stays whole."""
    size = mask.shape[axis]
    weights = mask.sum(axis=1 - axis).astype(np.float64)
    angles = 2 * np.pi * (np.arange(size) + 0.5) / size
    angle = np.arctan2((weights * np.sin(angles)).sum(), (weights * np.cos(angles)).sum())
    return (angle % (2 * np.pi)) * size / (2 * np.pi)


def centres(masks: np.ndarray) -> np.ndarray:
    """The object's centre `[T, 2]` (x, y) in pixels in every frame (a paths' control video and its clip: no
    wrap-around); NaN where none is seen."""
    out = np.full((len(masks), 2), np.nan)
    for i, mask in enumerate(masks):
        ys, xs = np.nonzero(mask)
        if len(xs):
            out[i] = xs.mean() + 0.5, ys.mean() + 0.5
    return out


def measure_motion(masks: np.ndarray, min_area: int = 4) -> str | None:
    areas = masks.sum(axis=(1, 2))
    frames = np.flatnonzero(areas >= min_area)
    if len(frames) < 2:
        return None
    first, last = areas[frames[0]], areas[frames[-1]]
    if last > 1.6 * first:
        return "growing"
    if first > 1.6 * last:
        return "shrinking"
    size_y, size_x = masks.shape[1:]
    xs = np.array([_circular_centre(masks[i], 1) for i in frames])
    ys = np.array([_circular_centre(masks[i], 0) for i in frames])
    # Frame-to-frame steps, unwrapped: a jump of more than half the frame is a wrap, not a move.
    dx = ((np.diff(xs) + size_x / 2) % size_x - size_x / 2).sum()
    dy = ((np.diff(ys) + size_y / 2) % size_y - size_y / 2).sum()
    if max(abs(dx), abs(dy)) < 0.05 * max(size_x, size_y):
        return None
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def _whole(masks: np.ndarray, min_area: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(mask, ys, xs) of the frames whose object has at least `min_area` pixels and touches no edge (cut or
    wrapped)."""
    for mask in masks:
        ys, xs = np.nonzero(mask)
        if len(ys) >= min_area and ys.min() > 0 and xs.min() > 0 and ys.max() < mask.shape[0] - 1 \
                and xs.max() < mask.shape[1] - 1:
            yield mask, ys, xs


def measure_shape(masks: np.ndarray, min_area: int = 30) -> str | None:
    """From how much of its bounding box the object fills: square ~0.8-1, circle ~0.79, triangle ~0.5.
    Frames where the object touches an edge (cut or wrapped) are skipped."""
    ratios = [len(ys) / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
              for _, ys, xs in _whole(masks, min_area)]
    if not ratios:
        return None
    fill = float(np.median(ratios))
    return "square" if fill > 0.88 else "circle" if fill > 0.64 else "triangle"


def measure(video: np.ndarray) -> dict[str, str | None]:
    """Colour, shape and motion seen in a float video `[T, H, W, 3]` in [0, 1]."""
    masks = object_masks(video)
    return {"colour": measure_colour(video, masks), "shape": measure_shape(masks),
            "motion": measure_motion(masks)}


def silhouettes(masks: np.ndarray) -> np.ndarray:
    """The masks with every row filled between its first and last pixel: an outline's filled shape (the shapes are
    convex), which `measure_shape` reads as it reads a filled one."""
    filled = np.zeros_like(masks)
    for frame, mask in zip(filled, masks):
        for y in np.flatnonzero(mask.any(axis=1)):
            xs = np.flatnonzero(mask[y])
            frame[y, xs[0]:xs[-1] + 1] = True
    return filled


def hollowness(masks: np.ndarray, min_area: int = 30) -> float | None:
    """The median share of the object's filled silhouette that is background: about 0 for a filled shape, about 0.37
    for the outlines of `shapes.render(..., outline=True)`. A row's silhouette is every pixel between the object's
    first and last (the shapes are convex). Frames where the object touches an edge are skipped."""
    shares = [1 - len(ys) / silhouettes(mask[None])[0].sum() for mask, ys, _ in _whole(masks, min_area)]
    return float(np.median(shares)) if shares else None


def _enclosed(mask: np.ndarray) -> int:
    """Background pixels that no 4-connected path of background joins to the frame's edge: a ring's hole."""
    background = ~mask
    reached = np.zeros_like(background)
    reached[[0, -1], :], reached[:, [0, -1]] = background[[0, -1], :], background[:, [0, -1]]
    while True:
        grown = reached.copy()
        grown[1:] |= reached[:-1]
        grown[:-1] |= reached[1:]
        grown[:, 1:] |= reached[:, :-1]
        grown[:, :-1] |= reached[:, 1:]
        grown &= background
        if np.array_equal(grown, reached):
            return int((background & ~reached).sum())
        reached = grown


def closed_share(masks: np.ndarray, min_area: int = 30, min_hole: int = 4) -> float | None:
    """The share of frames whose object is a closed ring (it encloses at least `min_hole` background pixels): 1 for
    the outlines of `shapes.render(..., outline=True)`, 0 for a filled shape or a ring open at one side. Frames where
    the object touches an edge are skipped."""
    shares = [_enclosed(mask) >= min_hole for mask, _, _ in _whole(masks, min_area)]
    return float(np.mean(shares)) if shares else None
