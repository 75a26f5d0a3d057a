"""Any image file Pillow opens, as RGB: 16-bit and float images scaled, not clipped at 255.

The scaling rule, by Pillow mode:

- 8-bit modes (1, L, LA, P, PA, RGB, RGBA, CMYK, YCbCr, …): Pillow's own convert("RGB"), so 255
  is white, alpha is dropped and palettes are expanded. (Pillow reads 16-bit RGB PNGs as 8-bit RGB.)
- I;16, I;16B, I;16L, I;16N (16-bit grey): 65535 is white.
- I (32-bit integer grey): taken as 16-bit data (the mode earlier Pillows gave 16-bit PNGs):
  65535 is white, values outside [0, 65535] are clipped.
- F (32-bit float grey): taken as already in [0, 1]; values outside are clipped.

Grey becomes R = G = B. Every failure to read a file, including Pillow's decompression-bomb guard
(an image of more than 2 × Image.MAX_IMAGE_PIXELS pixels), is an ImageReadError naming the file.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from PIL import Image

from aelab.errors import AelabError

# Pillow raises SyntaxError and EOFError from some format plugins for malformed files.
_READ_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


class ImageReadError(AelabError):
    """A file that could not be read as an image; .path and .reason for listing several."""

    def __init__(self, path: str | os.PathLike, reason: str, advice: str) -> None:
        self.path, self.reason = str(path), reason
        super().__init__(f"{path} could not be read as an image ({reason}). {advice}")


def _reason_and_advice(error: BaseException) -> tuple[str, str]:
    first_line = (str(error).splitlines() or [type(error).__name__])[0][:160]
    if isinstance(error, (FileNotFoundError, IsADirectoryError)):
        return first_line, "Check the path: it must name an image file."
    if isinstance(error, Image.DecompressionBombError):
        return first_line, (
            "Pillow refuses images this large as possible decompression bombs: downscale the "
            "image, or raise PIL.Image.MAX_IMAGE_PIXELS if you trust it."
        )
    return first_line, "It is truncated, corrupt or not an image: replace or remove it."


def _refuse_special_file(path: str | os.PathLike) -> None:
    """Only regular files are opened: opening a FIFO waits for a writer forever."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # Image.open names the problem
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise ImageReadError(
            path, "not a regular file: a FIFO, socket or device", "Give an image file."
        )


@contextmanager
def open_image(path: str | os.PathLike) -> Iterator[Image.Image]:
    """Image.open with every read failure (on opening or decoding inside the block) named."""
    _refuse_special_file(path)
    try:
        with Image.open(path) as image:
            yield image
    except _READ_ERRORS as error:
        reason, advice = _reason_and_advice(error)
        raise ImageReadError(path, reason, advice) from None


def _grey_scale(mode: str) -> float | None:
    """The value that is white in a non-8-bit grey mode; None for modes convert("RGB") handles."""
    if mode.startswith("I;16") or mode == "I":
        return 65535.0
    if mode == "F":
        return 1.0
    return None


def _as_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=-1)


def to_rgb_float(image: Image.Image) -> np.ndarray:
    """An open image as float32 (H, W, 3) in [0, 1], by the module's scaling rule."""
    white = _grey_scale(image.mode)
    if white is None:
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255
    grey = np.asarray(image).astype(np.float64) / white
    return _as_rgb(np.clip(grey, 0, 1).astype(np.float32))


def to_rgb_uint8(image: Image.Image) -> np.ndarray:
    """An open image as uint8 (H, W, 3), by the module's scaling rule (rounded to 255 steps)."""
    white = _grey_scale(image.mode)
    if white is None:
        return np.asarray(image.convert("RGB"))
    grey = np.clip(np.asarray(image).astype(np.float64) / white, 0, 1)
    return _as_rgb(np.rint(grey * 255).astype(np.uint8))


def read_rgb_float(path: str | os.PathLike) -> np.ndarray:
    """An image file as float32 (H, W, 3) in [0, 1]."""
    with open_image(path) as image:
        return to_rgb_float(image)


def read_rgb_uint8(path: str | os.PathLike, size: int | None = None) -> np.ndarray:
    """An image file as uint8 (H, W, 3), resized (bicubic) to size × size if given."""
    with open_image(path) as image:
        if _grey_scale(image.mode) is None:
            rgb = image.convert("RGB")  # 8-bit: exactly as before, so existing caches stay valid
        else:
            rgb = Image.fromarray(to_rgb_uint8(image))
        if size is not None and rgb.size != (size, size):
            rgb = rgb.resize((size, size), Image.Resampling.BICUBIC)
        return np.asarray(rgb)
