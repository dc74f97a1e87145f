"""Image reading with PIL, to RGB whatever the file's mode, with clear errors on bad files."""

from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image

from ..errors import InputError

# Largest image (width * height) we open: PIL's own decompression-bomb threshold. A tiny file can
# declare a huge canvas; decoding it would take gigabytes, so such files are refused before decoding.
MAX_IMAGE_PIXELS = 89_478_485
BACKGROUND = (255, 255, 255)  # transparent pixels are shown on white, as a viewer would


def load_image(image, name: str | None = None) -> Image.Image:
    """An image file path, PIL image or ``(H, W, 3)`` uint8 array as an RGB PIL image.

    Every mode becomes 8-bit RGB: transparency (RGBA, LA, P or L with a transparent colour) is
    composited on white; grayscale and 1-bit are repeated over the channels; CMYK goes through
    PIL's conversion; 16-bit ('I;16', and 'I' holding values above 255) is scaled by 1/257; float
    'F' in [0, 1] is scaled by 255, other floats are clipped to [0, 255]. Only the first frame of
    an animation is kept. EXIF orientation is not applied (datasets such as COCO were captioned
    from the stored pixels).

    Raises :class:`InputError` naming the file when it is missing, a folder, empty, not an image,
    truncated, or larger than :data:`MAX_IMAGE_PIXELS` (a possible decompression bomb).
    """
    if isinstance(image, Image.Image):
        return to_rgb(image, name or "image")
    if isinstance(image, np.ndarray):
        return to_rgb(_from_array(image, name or "array"), name or "array")
    return to_rgb(_open(os.fspath(image)), os.fspath(image))


def _open(path: str) -> Image.Image:
    if not os.path.exists(path):
        raise InputError(f"{path}: image file not found")
    if os.path.isdir(path):
        raise InputError(f"{path}: is a folder, not an image file")
    if os.path.getsize(path) == 0:
        raise InputError(f"{path}: image file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # PIL only warns between its limit and twice it; we refuse both.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                width, height = opened.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise InputError(
                        f"{path}: image of {width}x{height} pixels exceeds the limit of {MAX_IMAGE_PIXELS} "
                        "(possible decompression bomb)"
                    )
                opened.load()  # decode now, while the file is open: a truncated file fails here
                return opened.copy()
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise InputError(f"{path}: image too large, possible decompression bomb ({error})") from None
    except Image.UnidentifiedImageError:
        raise InputError(f"{path}: not an image file PIL can read") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:  # PIL's ways to say "corrupt"
        raise InputError(f"{path}: cannot read image ({str(error).strip() or type(error).__name__})") from None


def _from_array(array: np.ndarray, name: str) -> Image.Image:
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise InputError(
            f"{name}: an image array must be uint8 (H, W), (H, W, 3) or (H, W, 4), "
            f"got {array.dtype} {array.shape}"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise InputError(f"{name}: image array is empty {array.shape}")
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
