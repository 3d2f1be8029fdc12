"""Pictures and videos given as inputs: the picture of image-to-video, the video that `--continue` extends. Read
once where a video's settings are made (so that a bad file is an error before any work), used where it is
rendered.

numpy is imported inside the readers: settings, and so the command line's start (its flags), import this module.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from vcraft.errors import VcraftError

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class Picture:
    """A conditioning image: where it came from, the sha256 of its file (of its pixels when given in Python), and
    its RGB pixels `[H, W, 3]` uint8."""

    source: str  # the file's path, or "array" for pixels given in Python
    sha256: str
    pixels: np.ndarray = field(repr=False, compare=False)


def read_picture(image: Any) -> Picture:
    """A path, a PIL image, an RGB(A)/grey array (uint8, or floats in [0, 1]) or a Picture, as a Picture; a
    VcraftError saying what is wrong otherwise."""
    import numpy as np

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
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as opened:  # the bytes that are hashed are the ones decoded
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
    import numpy as np

    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    array = _rgb_uint8(array, 3, "an image array must be [height, width, 3] (RGB)")
    return Picture("array", hashlib.sha256(array.tobytes()).hexdigest(), array)


def _rgb_uint8(array: np.ndarray, ndim: int, shape_message: str) -> np.ndarray:
    """RGB(A) pixels, uint8 or floats in [0, 1], as contiguous RGB uint8 (alpha dropped)."""
    import numpy as np

    if array.ndim != ndim or array.shape[-1] not in (3, 4) or min(array.shape[:-1]) < 1:
        raise VcraftError(f"{shape_message}, got shape {list(array.shape)}")
    array = array[..., :3]
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.floating) or not np.isfinite(array).all() \
                or array.min() < 0 or array.max() > 1:
            raise VcraftError("pixels must be uint8, or floats in [0, 1]")
        array = np.round(array * 255).astype(np.uint8)
    return np.ascontiguousarray(array)


@dataclass(frozen=True)
class Footage:
    """A video to continue: where it came from, the sha256 of its file (of its PNG frames in order, or of its
    pixels when given in Python), its frames `[T, H, W, 3]` uint8 and its playback rate where the file says."""

    source: str
    sha256: str
    frames: np.ndarray = field(repr=False, compare=False)
    fps: Optional[float] = field(default=None, compare=False)


def read_footage(video: Any) -> Footage:
    """An MP4 or GIF file, a folder of PNG frames, a `[T, H, W, 3]` array or a Footage, as a Footage; a
    VcraftError saying what is wrong otherwise."""
    import numpy as np

    if isinstance(video, Footage):
        return video
    if isinstance(video, np.ndarray):
        frames = _rgb_uint8(video, 4, "a video array must be [frames, height, width, 3] (RGB)")
        return Footage("array", hashlib.sha256(frames.tobytes()).hexdigest(), frames)
    if not isinstance(video, (str, os.PathLike)):
        raise VcraftError(f"a video to continue must be a path or an array, not {type(video).__name__}")
    path = Path(video)
    if not path.exists():
        raise VcraftError(f"video not found: {path}")
    if path.is_dir():
        return _read_png_folder(path)
    import imageio.v3 as iio

    from vcraft.loaders.download import sha256_of

    try:
        frames = iio.imread(path, index=None)
        meta = iio.immeta(path)
        sha256 = sha256_of(path)
    except Exception as exc:  # each container and plugin raises its own kinds
        first = str(exc).strip().splitlines()
        raise VcraftError(f"cannot read video {path}: {first[0] if first else 'not an MP4 or GIF'}") from None
    fps = meta.get("fps") or (1000 / meta["duration"] if meta.get("duration") else None)
    if frames.ndim == 3:  # a single picture
        frames = frames[None]
    frames = _rgb_uint8(frames, 4, f"{path}: not a colour video")
    return Footage(str(path.resolve()), sha256, frames, fps)


def _read_png_folder(path: Path) -> Footage:
    import numpy as np

    files = sorted(path.glob("*.png"))
    if not files:
        raise VcraftError(f"{path} is a folder without PNG frames; give an MP4, a GIF or a folder of PNG frames")
    digest = hashlib.sha256()
    pictures = []
    for file in files:
        picture = _read_file(file)
        digest.update(bytes.fromhex(picture.sha256))
        pictures.append(picture.pixels)
    if len({p.shape for p in pictures}) > 1:
        raise VcraftError(f"{path}: the frames are not all the same size")
    return Footage(str(path.resolve()), digest.hexdigest(), np.stack(pictures))
