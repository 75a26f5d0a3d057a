"""Photos opened for prediction without torch: header checks against the memory bound (which
replace Pillow's decompression-bomb guard), EXIF orientation, and windows read as float RGB.

Torch-free, so scripts/colorize.py and reconstruct.py refuse a missing, unreadable or oversized
input in a second, before torch loads for the checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image

from aelab.analysis.tiles import Box
from aelab.data.image_io import open_image, to_rgb_float
from aelab.errors import AelabError

MB = 2**20
MEMORY_BOUND = 1024 * MB  # the peak resident memory of a colorize.py or reconstruct.py process
IMPORTS_BYTES = 800 * MB  # torch (a CUDA build maps ~700 MB of libraries), kornia, PIL, the network
TILE_BYTES = 48 * MB  # one tile's activations and colour conversion, one band of output rows
PHOTO_BYTES = MEMORY_BOUND - IMPORTS_BYTES  # the decoded photo, with its decoder's or the tiles'
# Decoders that write straight into the image; others may first decode into a buffer of their own.
DECODED_IN_PLACE = {"PNG", "TIFF", "BMP", "PPM", "GIF", "TGA", "ICO", "PCX", "SGI", "DIB", "IM"}
# EXIF orientation → the transposition that shows the photo upright (as PIL.ImageOps.exif_transpose).
UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


# A displayed box → the stored image's box, for each transposition that shows a photo upright:
# (swap x and y, then mirror x, mirror y).
STORED_BOX = {
    None: (False, False, False),
    Image.Transpose.FLIP_LEFT_RIGHT: (False, True, False),
    Image.Transpose.FLIP_TOP_BOTTOM: (False, False, True),
    Image.Transpose.ROTATE_180: (False, True, True),
    Image.Transpose.TRANSPOSE: (True, False, False),
    Image.Transpose.ROTATE_90: (True, True, False),
    Image.Transpose.ROTATE_270: (True, False, True),
    Image.Transpose.TRANSVERSE: (True, True, True),
}


@dataclass
class Photo:
    """An opened image as it is displayed (turned upright by its EXIF orientation), read a window
    at a time: the decoded image is never copied whole, nor turned whole."""

    image: Image.Image
    upright: Image.Transpose | None

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) as displayed."""
        width, height = self.image.size
        swapped = STORED_BOX[self.upright][0]
        return (width, height) if swapped else (height, width)

    def read(self, window: Box) -> np.ndarray:
        """The window as float RGB (h, w, 3) in [0, 1]; rows and columns past the photo's bottom
        and right edges repeat its last ones, as the network's replicate padding does."""
        height, width = self.size
        inside = Box(window.top, window.left, min(window.bottom, height), min(window.right, width))
        crop = self.image.crop(self._stored(inside))
        if self.upright is not None:
            crop = crop.transpose(self.upright)
        rgb = to_rgb_float(crop)
        padding = ((0, window.bottom - inside.bottom), (0, window.right - inside.right), (0, 0))
        return np.pad(rgb, padding, mode="edge") if any(sum(padding, ())) else rgb

    def _stored(self, box: Box) -> tuple[int, int, int, int]:
        """PIL's crop box (left, upper, right, lower) in the stored image for a displayed box."""
        swap, mirror_x, mirror_y = STORED_BOX[self.upright]
        width, height = self.image.size
        left, top, right, bottom = box.left, box.top, box.right, box.bottom
        if swap:
            left, top, right, bottom = top, left, bottom, right
        if mirror_x:
            left, right = width - right, width - left
        if mirror_y:
            top, bottom = height - bottom, height - top
        return left, top, right, bottom


def decoding_bytes(image: Image.Image) -> tuple[int, int]:
    """(the decoded image's bytes in Pillow's mode, its decoder's own buffer while decoding)."""
    pixels, bands = image.width * image.height, len(image.getbands())
    stored = 1 if image.mode in ("1", "L", "P") else 2 if image.mode.startswith("I;16") else 4
    if image.format in ("JPEG", "MPO"):  # a progressive JPEG keeps every coefficient, 2 bytes
        extra = 2 * bands if image.info.get("progressive") else 0
    else:
        extra = 0 if image.format in DECODED_IN_PLACE else 4 * bands
    return pixels * stored, pixels * extra


def check_fits(path: Path, image: Image.Image) -> None:
    """Refuse, from its header, a photo whose decoding would take the process over its bound."""
    stored, extra = decoding_bytes(image)
    if stored + max(extra, TILE_BYTES) <= PHOTO_BYTES:
        return
    colour_megapixels = (PHOTO_BYTES - TILE_BYTES) / 4 / 1e6
    progressive = ", progressive" if image.info.get("progressive") else ""
    raise AelabError(
        f"{path} is {image.width:,} × {image.height:,} pixels ({image.width * image.height / 1e6:.1f}"
        f" megapixels, {image.format} {image.mode}{progressive}): it needs about "
        f"{(stored + max(extra, TILE_BYTES)) / MB:,.0f} MB (decoded whole, then worked on in tiles), "
        f"more than the {PHOTO_BYTES / MB:,.0f} MB this script leaves a photo to keep the whole "
        f"process under {MEMORY_BOUND / MB:,.0f} MB: about {colour_megapixels:.0f} megapixels of "
        "8-bit colour, four times that of 8-bit grey. Downscale or crop it first (e.g. with "
        "Pillow's Image.reduce or ImageMagick's -resize)."
    )


@contextmanager
def open_photo(path: Path) -> Iterator[Photo]:
    """The image at path, opened lazily (header only) and checked against the memory bound, which
    replaces Pillow's decompression-bomb guard; read failures name the file."""
    if not path.is_file():
        raise AelabError(f"The input image {path} does not exist.")
    guard = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # check_fits is the guard: it knows the bound, Pillow does not
    try:
        with open_image(path) as image:
            Image.MAX_IMAGE_PIXELS = guard
            check_fits(path, image)
            yield Photo(image, None)
    finally:
        Image.MAX_IMAGE_PIXELS = guard


def turned_upright(photo: Photo) -> Photo:
    """The photo turned as its EXIF orientation tag says (reading EXIF may decode a PNG)."""
    orientation = photo.image.getexif().get(ExifTags.Base.Orientation, 1)
    return Photo(photo.image, UPRIGHT.get(orientation))
