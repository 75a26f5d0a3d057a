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

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from aelab.analysis.photos import TILE_BYTES, Photo, open_photo, turned_upright
from aelab.analysis.png_stream import PngStream
from aelab.analysis.tiles import Box, Tile, Tiling, tiling_for
from aelab.choices import DEFAULT_TEMPERATURE
from aelab.data.color import lab_to_rgb_keeping_lightness, rgb_to_lab_normalized
from aelab.errors import AelabError
from aelab.models.checkpoint import load_network, read_checkpoint
from aelab.models.network import size_multiple
from aelab.tasks.ab_bins import (
    DEFAULT_STRIDE,
    bin_count,
    classifier_logits,
    decode_bins,
)


def read_rgb(path: Path) -> torch.Tensor:
    """A small image file as a float RGB tensor (1, 3, H, W) in [0, 1], upright as its EXIF
    orientation says; grey becomes R = G = B, 16-bit and float scaled by aelab.data.image_io."""
    with open_photo(path) as photo:
        photo = turned_upright(photo)
        return as_tensor(photo.read(Box(0, 0, *photo.size)))


def as_tensor(rgb: np.ndarray) -> torch.Tensor:
    """(h, w, 3) float RGB → (1, 3, h, w), sharing its memory."""
    return torch.from_numpy(rgb).permute(2, 0, 1)[None]


@dataclass(frozen=True)
class Colorizer:
    """A colorization network and how its output becomes ab: sigmoid (loss=bce, mse) or the
    annealed mean over ab bins at `temperature` (loss=ce)."""

    network: nn.Module
    classifies: bool = False
    temperature: float = DEFAULT_TEMPERATURE
    stride: int = DEFAULT_STRIDE


def run_padded(network: nn.Module | Colorizer, inputs: torch.Tensor) -> torch.Tensor:
    """The network's output in [0, 1] at the input's size: pad to a multiple of 2^poolings (a
    custom network's size_multiple), then crop; a classifying colorizer's bins are decoded to ab at the padded size first."""
    colorizer = network if isinstance(network, Colorizer) else Colorizer(network)
    multiple = size_multiple(colorizer.network)
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


def predict_lab(colorizer: nn.Module | Colorizer, rgb: torch.Tensor) -> torch.Tensor:
    """RGB (or grey) → normalised Lab: the input's L with the a, b the network predicts from it."""
    lightness = rgb_to_lab_normalized(rgb)[:, :1]
    return torch.cat([lightness, run_padded(colorizer, lightness)], 1)


def colorize(network: nn.Module | Colorizer, rgb: torch.Tensor) -> torch.Tensor:
    """RGB (or grey) image → a colour image with the same lightness and predicted a, b."""
    return lab_to_rgb_keeping_lightness(predict_lab(network, rgb))


def reconstruct(network: nn.Module, rgb: torch.Tensor) -> torch.Tensor:
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


def conversion_for(network: nn.Module | Colorizer, budget: int = TILE_BYTES) -> Conversion:
    """colorize() for a Colorizer, reconstruct() for a bare network, cut in tiles of `budget`."""
    if not isinstance(network, Colorizer):
        return Conversion(partial(run_padded, network), _as_rgb, tiling_for(network, budget))
    stride, classes = (network.stride, bin_count()) if network.classifies else (1, None)
    tiling = tiling_for(network.network, budget, stride, classes)
    return Conversion(partial(predict_lab, network), lab_to_rgb_keeping_lightness, tiling)


def converted_tiles(conversion: Conversion, photo: Photo) -> Iterator[tuple[Tile, torch.Tensor]]:
    """Each tile with its converted RGB (1, 3, h, w) in [0, 1], a band of rows at a time."""
    for band in conversion.tiling.rows(*photo.size):
        for tile in band:
            yield tile, conversion.tile(as_tensor(photo.read(tile.window)), tile)


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
