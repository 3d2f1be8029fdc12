"""Conditioning pictures (image-to-video): read once where a video's settings are made, sized for the model where
it is rendered."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vcraft.errors import VcraftError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Picture:
    """A conditioning image: where it came from, the sha256 of its file (of its pixels when given in Python), and
    its RGB pixels `[H, W, 3]` uint8."""

    source: str  # the file's path, or "array" for pixels given in Python
    sha256: str
    pixels: np.ndarray = field(repr=False, compare=False)

    def record(self) -> dict[str, str]:
        return {"image": self.source, "image_sha256": self.sha256}


def read_picture(image: Any) -> Picture:
    """A path, a PIL image, an RGB(A)/grey array (uint8, or floats in [0, 1]) or a Picture, as a Picture; a
    VcraftError saying what is wrong otherwise."""
    if isinstance(image, Picture):
        return image
    if isinstance(image, (str, os.PathLike)):
        return _read_file(Path(image))
    if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image, without importing PIL for the check
        return _from_array(np.asarray(image.convert("RGB")))
    if isinstance(image, np.ndarray):
        return _from_array(image)
    raise VcraftError(f"image must be a file path, a PIL image or an array, not {type(image).__name__}")


def _read_file(path: Path) -> Picture:
    from PIL import Image, UnidentifiedImageError

    try:
        data = path.read_bytes()
        with Image.open(path) as opened:
            pixels = np.asarray(opened.convert("RGB"))
    except FileNotFoundError:
        raise VcraftError(f"image not found: {path}") from None
    except IsADirectoryError:
        raise VcraftError(f"{path} is a directory, not an image") from None
    except UnidentifiedImageError:
        raise VcraftError(f"{path} is not an image that can be read (PNG, JPEG, WebP, ...)") from None
    except (OSError, ValueError) as exc:
        raise VcraftError(f"cannot read image {path}: {str(exc).splitlines()[0] if str(exc) else 'damaged'}"
                          ) from None
    return Picture(str(path.resolve()), hashlib.sha256(data).hexdigest(), pixels)


def _from_array(array: np.ndarray) -> Picture:
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4) or min(array.shape[:2]) < 1:
        raise VcraftError(f"an image array must be [height, width, 3] (RGB), got shape {list(array.shape)}")
    array = array[:, :, :3]
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.floating) or not np.isfinite(array).all() \
                or array.min() < 0 or array.max() > 1:
            raise VcraftError("an image array must be uint8, or floats in [0, 1]")
        array = np.round(array * 255).astype(np.uint8)
    array = np.ascontiguousarray(array)
    return Picture("array", hashlib.sha256(array.tobytes()).hexdigest(), array)


def picture_tensor(picture: Picture, height: int, width: int) -> "torch.Tensor":
    """The picture at the video's size as `[1, 3, height, width]` in [-1, 1], as the reference loads it: bilinear
    through pixel centres on the 0-255 values, no antialiasing (OpenCV's INTER_LINEAR), then scaled."""
    import torch  # here, not at the top: settings (and so the command line's start) import this module
    import torch.nn.functional as F

    x = torch.tensor(picture.pixels, dtype=torch.float32).permute(2, 0, 1)[None]
    if tuple(x.shape[-2:]) != (height, width):
        x = F.interpolate(x, (height, width), mode="bilinear", align_corners=False)
    return (x / 255 - 0.5) * 2
