"""Use a trained checkpoint on any images: colorize (L → ab) or reconstruct, at any size, in a
bounded memory.

A photo is decoded once, whole (Pillow decodes no less), into its own mode (1 byte a pixel for
grey, 4 for colour); everything after works in tiles (aelab.analysis.tiles): each tile is cut
from the decoded photo, turned as its EXIF orientation says, run through the network with a
margin of context and cropped, converted to RGB, and its rows go into the PNG a band at a time
(aelab.analysis.png_stream). The result equals one run over the whole photo. Photos whose decoding
would not fit the bound are refused from their header, before any work: this replaces Pillow's
decompression-bomb guard, which admits photos of up to 179 megapixels.

Checkpoints are read with torch.load(weights_only=True): a checkpoint from elsewhere is data, and
a pickle that would run code is refused, not executed.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import ExifTags, Image
from rich.progress import track

from aelab.analysis.png_stream import PngStream
from aelab.analysis.tiles import Box, Tile, Tiling, tiling_for
from aelab.choices import DEFAULT_TEMPERATURE
from aelab.data.color import lab_to_rgb_keeping_lightness, rgb_to_lab_normalized
from aelab.data.image_io import open_image, to_rgb_float
from aelab.errors import AelabError
from aelab.models import ConvAutoEncoder
from aelab.models.checkpoint import load_network, read_checkpoint
from aelab.tasks.ab_bins import (
    DEFAULT_STRIDE,
    bin_count,
    classifier_logits,
    decode_bins,
)

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


def read_rgb(path: Path) -> torch.Tensor:
    """A small image file as a float RGB tensor (1, 3, H, W) in [0, 1], upright as its EXIF
    orientation says; grey becomes R = G = B, 16-bit and float scaled by aelab.data.image_io."""
    with open_photo(path) as photo:
        photo = turned_upright(photo)
        return photo.read(Box(0, 0, *photo.size))


@dataclass(frozen=True)
class Colorizer:
    """A colorization network and how its output becomes ab: sigmoid (loss=bce, mse) or the
    annealed mean over ab bins at `temperature` (loss=ce)."""

    network: ConvAutoEncoder
    classifies: bool = False
    temperature: float = DEFAULT_TEMPERATURE
    stride: int = DEFAULT_STRIDE


def run_padded(network: ConvAutoEncoder | Colorizer, inputs: torch.Tensor) -> torch.Tensor:
    """The network's output in [0, 1] at the input's size: pad to a multiple of 2^poolings, then
    crop; a classifying colorizer's bins are decoded to ab at the padded size first."""
    colorizer = network if isinstance(network, Colorizer) else Colorizer(network)
    multiple = 2**colorizer.network.pooling_stages
    height, width = inputs.shape[-2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    padded = F.pad(inputs, (0, pad_w, 0, pad_h), mode="replicate")
    with torch.no_grad():
        if colorizer.classifies:
            logits = classifier_logits(colorizer.network, padded, colorizer.stride)
            output = decode_bins(logits, colorizer.temperature, padded.shape[-2:])
        else:
            output = torch.sigmoid(colorizer.network(padded))
    return output[..., :height, :width]


def load_colorizer(path: Path, temperature: float | None = None) -> Colorizer:
    """The colorization network of a checkpoint with its decoding: loss=ce checkpoints decode at
    `temperature`, or at the temperature they were trained with."""
    network = load_network(path, "colorization")
    checkpoint = read_checkpoint(path)
    if checkpoint["aelab"].get("loss") != "ce":
        return Colorizer(network)
    hyperparameters = checkpoint.get("hyper_parameters", {})
    if temperature is None:
        temperature = float(hyperparameters.get("temperature", DEFAULT_TEMPERATURE))
    stride = int(hyperparameters.get("ce_stride", DEFAULT_STRIDE))
    return Colorizer(network, classifies=True, temperature=temperature, stride=stride)


def predict_lab(colorizer: ConvAutoEncoder | Colorizer, rgb: torch.Tensor) -> torch.Tensor:
    """RGB (or grey) → normalised Lab: the input's L with the a, b the network predicts from it."""
    lightness = rgb_to_lab_normalized(rgb)[:, :1]
    return torch.cat([lightness, run_padded(colorizer, lightness)], 1)


def colorize(network: ConvAutoEncoder | Colorizer, rgb: torch.Tensor) -> torch.Tensor:
    """RGB (or grey) image → a colour image with the same lightness and predicted a, b."""
    return lab_to_rgb_keeping_lightness(predict_lab(network, rgb))


def reconstruct(network: ConvAutoEncoder, rgb: torch.Tensor) -> torch.Tensor:
    return run_padded(network, rgb)


def _as_rgb(prediction: torch.Tensor) -> torch.Tensor:
    return prediction


@dataclass(frozen=True)
class Conversion:
    """A task on RGB windows: `predict` runs the network at a window's size, `finish` turns the
    prediction, cropped to the tile's core, into RGB; `tiling` cuts a photo for it."""

    predict: Callable[[torch.Tensor], torch.Tensor]
    finish: Callable[[torch.Tensor], torch.Tensor]
    tiling: Tiling

    def tile(self, window: torch.Tensor, tile: Tile) -> torch.Tensor:
        rows, columns = tile.crop()
        return self.finish(self.predict(window)[..., rows, columns])


def conversion_for(network: ConvAutoEncoder | Colorizer, budget: int = TILE_BYTES) -> Conversion:
    """colorize() for a Colorizer, reconstruct() for a bare network, cut in tiles of `budget`."""
    if not isinstance(network, Colorizer):
        return Conversion(partial(run_padded, network), _as_rgb, tiling_for(network, budget))
    stride, classes = (network.stride, bin_count()) if network.classifies else (1, None)
    tiling = tiling_for(network.network, budget, stride, classes)
    return Conversion(partial(predict_lab, network), lab_to_rgb_keeping_lightness, tiling)


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

    def read(self, window: Box) -> torch.Tensor:
        """The window as float RGB (1, 3, h, w) in [0, 1]; rows and columns past the photo's
        bottom and right edges repeat its last ones, as run_padded's padding does."""
        height, width = self.size
        inside = Box(window.top, window.left, min(window.bottom, height), min(window.right, width))
        crop = self.image.crop(self._stored(inside))
        if self.upright is not None:
            crop = crop.transpose(self.upright)
        rgb = torch.from_numpy(to_rgb_float(crop)).permute(2, 0, 1)[None]
        padding = (0, window.right - inside.right, 0, window.bottom - inside.bottom)
        return F.pad(rgb, padding, mode="replicate") if any(padding) else rgb

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


def converted_tiles(conversion: Conversion, photo: Photo) -> Iterator[tuple[Tile, torch.Tensor]]:
    """Each tile with its converted RGB (1, 3, h, w) in [0, 1], a band of rows at a time."""
    for band in conversion.tiling.rows(*photo.size):
        for tile in band:
            yield tile, conversion.tile(photo.read(tile.window), tile)


def write_converted(conversion: Conversion, photo: Photo, path: Path) -> None:
    """The converted photo as a PNG, a band of rows at a time, through a temporary file and a
    rename: a stopped run leaves no half-written PNG."""
    photo.image.load()  # decoded first: a truncated input is named as the input, not the output
    height, width = photo.size
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with temporary.open("wb") as file:
            png = PngStream(file, width, height)
            for tile, rgb in converted_tiles(conversion, photo):
                if tile.core.left == 0:
                    rows = np.empty((tile.core.height, width, 3), dtype=np.uint8)
                rows[:, tile.core.left : tile.core.right] = to_uint8(rgb)
                if tile.core.right == width:
                    png.write(rows)
            png.close()
        temporary.replace(path)
    except OSError as error:
        raise AelabError(f"{path} could not be written ({error}).") from None
    finally:
        temporary.unlink(missing_ok=True)


def to_uint8(rgb: torch.Tensor) -> np.ndarray:
    """(1, 3, h, w) in [0, 1] → (h, w, 3) uint8."""
    return (rgb[0].permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def check_out_dir(out_dir: Path) -> None:
    """Refuse an --out-dir that is not, or cannot become, a writable directory."""
    existing = out_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = "--out-dir" if existing == out_dir else f"--out-dir {out_dir} lies under a file:"
        raise AelabError(
            f"{what} {existing} is a file, not a directory. Choose a directory for the PNGs."
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise AelabError(
            f"--out-dir {out_dir} cannot be written: {existing} is not writable by you. Choose a "
            "directory you can write to."
        )


def check_outputs(inputs: list[Path], outputs: list[Path], overwrite: bool) -> None:
    """Never write over an input; write over an earlier output only with --overwrite."""
    real_inputs = {os.path.realpath(path) for path in inputs}
    onto_inputs = [str(out) for out in outputs if os.path.realpath(out) in real_inputs]
    if onto_inputs:
        raise AelabError(
            f"The output {', '.join(onto_inputs)} would replace an input image. Choose another "
            "--out-dir, or rename the input (outputs are named INPUT_STEM.png)."
        )
    existing = [out for out in outputs if os.path.lexists(out)]
    directories = [str(out) for out in existing if out.is_dir() and not out.is_symlink()]
    if directories:
        raise AelabError(
            f"{', '.join(directories)}: a directory where an output PNG would go. Move it away "
            "or choose another --out-dir."
        )
    if existing and not overwrite:
        names = ", ".join(out.name for out in existing[:5])
        more = f" and {len(existing) - 5} more" if len(existing) > 5 else ""
        raise AelabError(
            f"{outputs[0].parent} already holds {names}{more}, the outputs these inputs would "
            "write. Pass --overwrite to replace them, or choose another --out-dir."
        )


def main(task: str, argv: list[str] | None = None) -> int:
    """The command line of scripts/colorize.py and scripts/reconstruct.py.

    Every check (checkpoint, inputs, outputs, --out-dir) runs before the first image is written.
    """
    verb = "Colorize" if task == "colorization" else "Reconstruct"
    parser = argparse.ArgumentParser(
        description=f"{verb} images of any size with a trained aelab {task} checkpoint; "
        "writes one PNG per input, named after it (INPUT_STEM.png)."
    )
    parser.add_argument("inputs", nargs="+", type=Path, help="image files (jpg, png, …)")
    parser.add_argument("--ckpt", required=True, type=Path, help="a run's checkpoints/best.ckpt")
    parser.add_argument("--out-dir", required=True, type=Path, help="where the PNGs go")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace PNGs already in --out-dir (never inputs)"
    )
    if task == "colorization":
        parser.add_argument(
            "--temperature",
            type=float,
            default=None,
            help="loss=ce checkpoints: the annealed mean's temperature (1 the mean, 0 the mode; "
            "default: the run's task.temperature)",
        )
    args = parser.parse_args(argv)
    try:
        temperature = getattr(args, "temperature", None)
        if temperature is not None and not temperature >= 0:
            raise AelabError(f"--temperature must be ≥ 0 (0 is the mode), got {temperature}.")
        if task == "colorization":
            network = load_colorizer(args.ckpt, temperature)
        else:
            network = load_network(args.ckpt, task)
        missing = [str(p) for p in args.inputs if not p.is_file()]
        if missing:
            raise AelabError(f"These input images do not exist: {', '.join(missing)}.")
        stems = [p.stem for p in args.inputs]
        clashing = sorted({stem for stem in stems if stems.count(stem) > 1})
        if clashing:
            raise AelabError(
                f"Several inputs share a name ({', '.join(clashing)}): their PNGs would overwrite "
                "each other in --out-dir. Colorize them in separate runs or rename them."
            )
        outputs = [args.out_dir / f"{path.stem}.png" for path in args.inputs]
        check_out_dir(args.out_dir)
        check_outputs(args.inputs, outputs, args.overwrite)
        for path in args.inputs:  # headers only: unreadable and oversized images, before any work
            with open_photo(path):
                pass
        try:
            args.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise AelabError(f"--out-dir {args.out_dir} could not be created ({error}).") from None
        conversion = conversion_for(network)
        pairs = list(zip(args.inputs, outputs, strict=True))
        for path, out in track(pairs, description=f"{verb}", disable=len(pairs) < 2):
            with open_photo(path) as photo:
                write_converted(conversion, turned_upright(photo), out)
    except AelabError as error:
        print(f"aelab: {error}", file=sys.stderr)
        return 2
    print(f"Wrote {len(args.inputs)} image(s) to {args.out_dir}")
    return 0
