"""A network run over an image of any size in tiles whose result equals one run over the whole.

A custom network's receptive radius is unknown, so it is run untiled, on images up to
UNTILED_SIDE pixels a side; larger ones are refused before any work.

The image is padded (replicating its edge) to a multiple of 2^poolings, as one run would pad it,
and cut into cores, each a multiple of 2^poolings so that every tile's pooling grid is the whole
image's. Each core is run with a margin of context around it, at least the network's receptive
radius, and cropped back: a pixel of a core sees exactly what it would see in the whole image
(the zero padding at a window's inner edges reaches no further than the margin), so no seam shows.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aelab.errors import AelabError

if TYPE_CHECKING:  # boxes and tilings are torch-free: aelab.analysis.photos checks inputs early
    from torch import nn

    from aelab.models import ConvAutoEncoder

FLOAT_BYTES = 4
LIVE_TENSORS = 4  # a layer's input and output, the caller's copy and the kernel's scratch
FINISH_BYTES = 240  # per core pixel: Lab → RGB with its gamut bisection, float32 temporaries
UNTILED_SIDE = 1024  # a custom network's largest image side: run whole, its context unknown
UPSAMPLE_REACH = {"nearest": 1, "bilinear": 2, "bicubic": 3}  # input pixels an output one reads


@dataclass(frozen=True)
class Box:
    """A rectangle of pixels, rows [top, bottom) and columns [left, right)."""

    top: int
    left: int
    bottom: int
    right: int

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def width(self) -> int:
        return self.right - self.left


@dataclass(frozen=True)
class Tile:
    window: Box  # what the network is run on, in the padded image
    core: Box  # what this tile gives to the output, inside the image

    def crop(self) -> tuple[slice, slice]:
        """The core's rows and columns in the window's output."""
        top, left = self.core.top - self.window.top, self.core.left - self.window.left
        return slice(top, top + self.core.height), slice(left, left + self.core.width)


@dataclass(frozen=True)
class Tiling:
    multiple: int  # 2^poolings: every core, margin and window edge is a multiple of it
    core: int  # a core's side
    margin: int  # context on each side of a core
    whole: str = ""  # why the network must see the whole image at once ("": it runs in tiles)

    def refuse_oversize(self, height: int, width: int, name: str) -> None:
        """A network that sees the whole image runs in one window: a larger image is refused."""
        if self.whole and max(height, width) > self.core:
            raise AelabError(
                f"{name} is {width}×{height} pixels; {self.whole}, so it cannot be run in "
                "seamless tiles and runs on the whole image, at most "
                f"{self.core} pixels a side within the memory bound. Resize it to fit."
            )

    def rows(self, height: int, width: int) -> Iterator[list[Tile]]:
        """The tiles of a height × width image, a band of rows at a time, top to bottom."""
        self.refuse_oversize(height, width, "The image")
        padded = (_round_up(height, self.multiple), _round_up(width, self.multiple))
        for top in range(0, height, self.core):
            yield [
                Tile(
                    Box(
                        max(top - self.margin, 0),
                        max(left - self.margin, 0),
                        min(top + self.core + self.margin, padded[0]),
                        min(left + self.core + self.margin, padded[1]),
                    ),
                    Box(top, left, min(top + self.core, height), min(left + self.core, width)),
                )
                for left in range(0, width, self.core)
            ]


def receptive_radius(network: ConvAutoEncoder, stride: int = 1) -> int | None:
    """An upper bound, in input pixels, on how far an output pixel sees: each conv reaches its
    kernel's half (a strided one its kernel, then a pixel of its coarser scale), each 2×2 pooling
    one pixel of its coarser scale, each upsampling one (nearest, transposed, pixel shuffle), two
    (bilinear) or three (bicubic) of its input's. A classifying colorizer leaves out its last log2(stride) upsamplings, as
    classifier_logits does, then upsamples bilinearly from there. Skips add nothing: a stage's
    output sees less than the deeper path it joins. None when a layer normalises over the whole
    image (group norm): no margin makes a tile see what the whole run sees."""
    from torch import nn  # the network's layers: torch is loaded by whoever built it

    upsampling = (nn.Upsample, nn.ConvTranspose2d, nn.PixelShuffle)
    layers = [
        layer
        for part in (network.encoder, network.decoder)
        for layer in part.modules()
        if not any(True for _ in layer.children())
    ]
    if any(isinstance(layer, nn.GroupNorm | nn.LayerNorm | nn.InstanceNorm2d) for layer in layers):
        return None
    skipped = min(max(stride.bit_length() - 1, 0), network.pooling_stages)
    upsamplings = sum(isinstance(layer, upsampling) for layer in layers)
    radius, scale, seen = 0, 1, 0
    for layer in layers:
        if isinstance(layer, nn.Conv2d) and layer.stride[0] == 1:
            radius += layer.kernel_size[0] // 2 * scale
        elif isinstance(layer, nn.MaxPool2d | nn.AvgPool2d):
            scale *= 2
            radius += scale
        elif isinstance(layer, nn.Conv2d):  # strided: its kernel at this scale, then the coarser
            radius += (layer.kernel_size[0] - 1) * scale
            scale *= layer.stride[0]
            radius += scale
        elif isinstance(layer, upsampling):
            seen += 1
            if seen <= upsamplings - skipped:
                radius += UPSAMPLE_REACH.get(getattr(layer, "mode", None), 1) * scale
                scale //= 2
    return radius + UPSAMPLE_REACH["bilinear"] * scale if scale > 1 else radius


def tiling_for(
    network: nn.Module, budget: int, stride: int = 1, classes: int | None = None
) -> Tiling:
    """Cores as large as `budget` bytes allow for one window's activations (the widest layer at
    full resolution; a classifier's `classes` logits at 1/stride²) and its core's conversion;
    at least twice the margin, so that no window is more than 4 times its core. A network that
    sees the whole image (group norm, or a custom network whose reach is unknown) gets one
    window: as large as the budget allows, or UNTILED_SIDE for a custom one."""
    from torch import nn

    from aelab.models.network import is_custom, size_multiple

    if is_custom(network):
        multiple = size_multiple(network)
        unknown = "a custom network's receptive field is unknown to aelab"
        return Tiling(multiple, UNTILED_SIDE // multiple * multiple, 0, whole=unknown)
    multiple = 2**network.pooling_stages
    radius = receptive_radius(network, stride)
    margin = 0 if radius is None else _round_up(radius, multiple)
    head = math.ceil(classes / min(stride, multiple) ** 2) if classes else network.out_channels
    convs = [m for m in network.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
    hidden = [c for conv in convs[:-1] for c in (conv.in_channels, conv.out_channels)]
    widest = max(*hidden, convs[-1].in_channels, network.in_channels, head)
    per_pixel = FLOAT_BYTES * LIVE_TENSORS * widest + FINISH_BYTES
    window = math.isqrt(budget // per_pixel)
    if radius is None:
        grouped = "this network normalises over the whole image (model.norm=group)"
        return Tiling(multiple, max(window // multiple * multiple, multiple), 0, whole=grouped)
    core = max((window - 2 * margin) // multiple * multiple, 2 * margin, multiple)
    return Tiling(multiple, core, margin)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple
