"""Image reading with PIL, to RGB whatever the file's mode, with clear errors on bad files."""

from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image

from ..errors import InputError
from .files import check_regular, escape, open_regular

# Largest image (width * height) we open: PIL's own decompression-bomb threshold. A tiny file can
# declare a huge canvas; decoding it would take gigabytes, so such files are refused before decoding.
MAX_IMAGE_PIXELS = 89_478_485
# Degenerate shapes pass the pixel limit yet blow up at resize (an 80,000,000 x 1 PNG resized to a
# shorter side of 224 is 4e12 pixels): sides beyond JPEG's limit and aspect ratios beyond 2000:1
# (2000 x 1 still works, at 0.3 GB once resized) are refused before decoding.
MAX_IMAGE_SIDE = 65_535
MAX_ASPECT_RATIO = 2000
BACKGROUND = (255, 255, 255)  # transparent pixels are shown on white, as a viewer would


def load_image(image, name: str | None = None) -> Image.Image:
    """An image file path, PIL image or ``(H, W, 3)`` uint8 array as an RGB PIL image.

    Every mode becomes 8-bit RGB: transparency (RGBA, LA, P or L with a transparent colour) is
    composited on white; grayscale and 1-bit are repeated over the channels; CMYK goes through
    PIL's conversion; 16-bit ('I;16', and 'I' holding values above 255) is scaled by 1/257; float
    'F' in [0, 1] is scaled by 255, other floats are clipped to [0, 255]. Only the first frame of
    an animation is kept. EXIF orientation is not applied (datasets such as COCO were captioned
    from the stored pixels).

    Raises :class:`InputError` naming the file when it is missing, not a regular file (a folder, a
    FIFO, a device), empty, not an image, truncated, larger than :data:`MAX_IMAGE_PIXELS` (a
    possible decompression bomb), or of a degenerate shape (see :data:`MAX_ASPECT_RATIO`).
    """
    if isinstance(image, Image.Image):
        _check_shape(image.width, image.height, name or "image")
        return to_rgb(image, name or "image")
    if isinstance(image, np.ndarray):
        return to_rgb(_from_array(image, name or "array"), name or "array")
    if not isinstance(image, (str, bytes, os.PathLike)):
        raise InputError(f"expected an image path, PIL image or array, got {type(image).__name__}")
    path = os.fsdecode(os.fspath(image))
    return to_rgb(_open(path), escape(path))


def _open(path: str) -> Image.Image:
    name = escape(path)
    if check_regular(path, "image file") == 0:  # a FIFO or /dev/urandom is named as such there
        raise InputError(f"{name}: image file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # PIL only warns between its limit and twice it; we refuse both.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with open_regular(path, "image file") as raw, Image.open(raw) as opened:
                _check_shape(*opened.size, name)
                opened.load()  # decode now, while the file is open: a truncated file fails here
                return opened.copy()
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise InputError(f"{name}: image too large, possible decompression bomb ({error})") from None
    except Image.UnidentifiedImageError:
        raise InputError(f"{name}: not an image file PIL can read") from None
    except Exception as error:  # PIL's ways to say "corrupt" include struct.error, IndexError, ZeroDivisionError
        raise InputError(f"{name}: cannot read image ({str(error).strip()[:200] or type(error).__name__})") from None


def _check_shape(width: int, height: int, name: str) -> None:
    """Refuse, from the header, canvases whose decoding or resizing would take gigabytes."""
    if width * height > MAX_IMAGE_PIXELS:
        raise InputError(f"{name}: image of {width}x{height} pixels exceeds the limit of {MAX_IMAGE_PIXELS} "
                         "(possible decompression bomb)")
    if width > 0 and height > 0 and (max(width, height) > MAX_IMAGE_SIDE
                                     or max(width, height) > MAX_ASPECT_RATIO * min(width, height)):
        raise InputError(f"{name}: image of {width}x{height} pixels has a degenerate shape (sides up to "
                         f"{MAX_IMAGE_SIDE}, aspect ratio up to {MAX_ASPECT_RATIO}:1)")


def _from_array(array: np.ndarray, name: str) -> Image.Image:
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise InputError(
            f"{name}: an image array must be uint8 (H, W), (H, W, 3) or (H, W, 4), "
            f"got {array.dtype} {array.shape}"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise InputError(f"{name}: image array is empty {array.shape}")
    _check_shape(array.shape[1], array.shape[0], name)
    return Image.fromarray(np.ascontiguousarray(array))


def to_rgb(image: Image.Image, name: str = "image") -> Image.Image:
    """Any PIL image as a new 8-bit RGB image (see :func:`load_image` for each mode)."""
    if image.width == 0 or image.height == 0:
        raise InputError(f"{name}: image has no pixels ({image.width}x{image.height})")
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(image, dtype=np.float64)
        if mode != "I" or values.max(initial=0) > 255:
            values = values / 257.0  # 16-bit range to 8-bit
        image = Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8), "L")
    elif mode == "F":
        values = np.asarray(image, dtype=np.float64)
        values = np.nan_to_num(values, nan=0.0, posinf=255.0, neginf=0.0)
        if values.size and values.min() >= 0.0 and values.max() <= 1.0:
            values = values * 255.0
        image = Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8), "L")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    try:
        if has_alpha:
            rgba = image.convert("RGBA")
            canvas = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
            return Image.alpha_composite(canvas, rgba).convert("RGB")
        return image.convert("RGB")
    except (ValueError, OSError) as error:
        raise InputError(f"{name}: cannot convert image of mode {image.mode!r} to RGB ({error})") from None
