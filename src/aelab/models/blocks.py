"""The layers of the network family beside plain convs: normalisation, residual blocks, learned
down- and upsampling, and the U-Net skip connections."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from aelab.choices import ACTIVATIONS
from aelab.errors import AelabError

ACTIVATION_LAYERS = dict(zip(ACTIVATIONS, (nn.ReLU, nn.GELU, nn.SiLU, nn.LeakyReLU), strict=True))
GROUPS = 8  # norm=group: 8 groups, or the largest count that divides the width


def same_conv(
    in_channels: int, out_channels: int, kernel_size: int, bias: bool = True
) -> nn.Conv2d:
    """A stride-1 conv whose 'same' padding keeps the size (for the odd kernels the schema allows)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)


def norm_layers(norm: str, channels: int) -> list[nn.Module]:
    """The normalisation after a hidden conv: none, batch statistics, or per image over groups."""
    if norm == "batch":
        return [nn.BatchNorm2d(channels)]
    if norm == "group":
        return [nn.GroupNorm(math.gcd(channels, GROUPS), channels)]
    return []


class ResidualBlock(nn.Module):
    """act(x + norm(conv(act(norm(conv(x)))))): two more convs at a stage's width and size, whose
    identity path lets a deeper network start as the shallow one."""

    def __init__(self, channels: int, kernel_size: int, norm: str, activation: str) -> None:
        super().__init__()
        act, bias = ACTIVATION_LAYERS[activation], norm == "none"  # a norm's shift is the bias
        self.body = nn.Sequential(
            same_conv(channels, channels, kernel_size, bias),
            *norm_layers(norm, channels),
            act(),
            same_conv(channels, channels, kernel_size, bias),
            *norm_layers(norm, channels),
        )
        self.activation = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(x + self.body(x))


def downsampler(pooling: str, channels: int) -> nn.Module | None:
    """Halves the size on the 2×2 grid pooling uses (so sizes floor alike); None for no pooling."""
    if pooling == "max":
        return nn.MaxPool2d(2)
    if pooling == "avg":
        return nn.AvgPool2d(2)
    if pooling == "stride":
        return nn.Conv2d(channels, channels, 2, stride=2)
    return None


class PixelShuffleUp(nn.Sequential):
    """Sub-pixel upsampling (Shi et al., 2016): a 'same' conv to 4× the channels, rearranged into
    an image twice the size with the channels it started with."""

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__(same_conv(channels, 4 * channels, kernel_size), nn.PixelShuffle(2))


UPSAMPLERS = (nn.Upsample, nn.ConvTranspose2d, PixelShuffleUp)  # each keeps the channels


def upsampler(mode: str, channels: int, kernel_size: int) -> nn.Module:
    """Doubles the size: an interpolation, a 2×2 transposed conv of stride 2, or a pixel shuffle."""
    if mode == "transposed":
        return nn.ConvTranspose2d(channels, channels, 2, stride=2)
    if mode == "pixelshuffle":
        return PixelShuffleUp(channels, kernel_size)
    return nn.Upsample(scale_factor=2, mode=mode)


class SkipSource(nn.Identity):
    """Marks an encoder stage's output: the decoder stage at its scale takes it in (SkipMerge)."""


class SkipMerge(nn.Module):
    """Concatenates an encoder stage's output to the decoder's input at that stage: the widths
    need not match, and the next conv weighs both. A decoder running coarser than the stage (a bin
    head leaving upsamplings out) gets the stage's output average-pooled to its size."""

    def forward(self, hidden: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        factor = skip.shape[-1] // max(hidden.shape[-1], 1)
        if factor > 1:
            skip = F.avg_pool2d(skip, factor)
        if skip.shape[-2:] != hidden.shape[-2:]:
            raise AelabError(
                f"A network with model.skips=true met an encoder stage of {tuple(skip.shape[-2:])} "
                f"and a decoder stage of {tuple(hidden.shape[-2:])}: its input's sides must be "
                "multiples of 2^(len(model.widths) − 1), as training and prediction pad them."
            )
        return torch.cat([hidden, skip], 1)
