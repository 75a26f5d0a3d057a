"""The convolutional autoencoder of the seed study, generalised into a family: any widths,
pooling (or a learned strided conv), upsampling (interpolated or learned), normalisation, residual
blocks, a code of its own channels, and U-Net skips."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from aelab.config.schema import check_arguments
from aelab.errors import AelabError
from aelab.models.blocks import (
    ACTIVATION_LAYERS,
    UPSAMPLERS,
    ResidualBlock,
    SkipMerge,
    SkipSource,
    downsampler,
    norm_layers,
    same_conv,
    upsampler,
)


class ConvAutoEncoder(nn.Module):
    """Encoder of 'same' convs with 2×2 downsampling between them; a mirrored decoder.

    The defaults build the assignment network exactly:
    conv 8 → pool → conv 12 → pool → conv 16 (latent 16×8×8) → up → conv 12 → up → conv 3.
    Decoder convs are the encoder widths reversed, without the latent's and without the first
    (whose place the output conv takes), so there is one decoder conv per pooling stage.
    Each hidden conv may be followed by a norm and `blocks` residual blocks. `latent_channels`
    adds a 1×1 conv that makes the code that many channels, and the decoder then mirrors the
    encoder: a stage at the code's scale lifts it back to the last width, and each encoder width
    gets its decoder stage (a few code channels are not upsampled as they are). `skips`
    concatenates each encoder stage's output to the decoder stage at its scale. The head returns
    logits: losses and metrics apply the sigmoid themselves.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        widths: Sequence[int] = (8, 12, 16),
        kernel_size: int = 3,
        pooling: str = "max",
        upsample_mode: str = "nearest",
        activation: str = "relu",
        norm: str = "none",
        blocks: int = 0,
        latent_channels: int | None = None,
        skips: bool = False,
    ) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        check_arguments(
            "model",
            widths=widths,
            kernel_size=kernel_size,
            pooling=pooling,
            upsample_mode=upsample_mode,
            activation=activation,
            norm=norm,
            blocks=blocks,
            latent_channels=latent_channels,
            skips=skips,
        )
        if skips and len(widths) < 2:
            raise AelabError(
                f"model.skips=true needs at least two model.widths (got {widths}): skips join "
                "each encoder stage to the decoder stage at its scale, and one stage has none. "
                "Give more widths, e.g. model.widths=[8,12,16], or model.skips=false."
            )
        self.in_channels, self.out_channels = in_channels, out_channels
        self.widths, self.kernel_size, self.pooling = widths, kernel_size, pooling
        self.upsample_mode, self.activation = upsample_mode, activation
        self.norm, self.blocks, self.skips = norm, int(blocks), bool(skips)
        self.latent_channels = None if latent_channels is None else int(latent_channels)

        encoder: list[nn.Module] = []
        previous = in_channels
        for index, width in enumerate(widths):
            if index > 0 and pooling != "none":
                encoder.append(downsampler(pooling, previous))
            encoder += self._stage(previous, width)
            if skips and index < len(widths) - 1:
                encoder.append(SkipSource())
            previous = width
        decoder: list[nn.Module] = []
        if self.latent_channels is not None:  # a linear code, lifted back to the last width
            encoder.append(nn.Conv2d(previous, self.latent_channels, 1))
            decoder += self._stage(self.latent_channels, previous)
        self.encoder = nn.Sequential(*encoder)

        # The seed's decoder has a conv per pooling but none at the code's width; with its own
        # code channels the decoder mirrors the encoder, a stage per encoder stage.
        decoder_widths = [*reversed(widths[:-1] if latent_channels is not None else widths[1:-1])]
        skip_widths = [*reversed(widths[:-1])]  # the encoder stage each decoder stage meets
        for index in range(len(widths) - 1):
            if self.pooling_stages:  # one upsample per encoder pooling
                decoder.append(upsampler(upsample_mode, previous, kernel_size))
            if skips:
                decoder.append(SkipMerge())
                previous += skip_widths[index]
            if index < len(decoder_widths):
                decoder += self._stage(previous, decoder_widths[index])
                previous = decoder_widths[index]
        decoder.append(same_conv(previous, out_channels, kernel_size))  # logits: no norm, no act
        self.decoder = nn.Sequential(*decoder)

    def _stage(self, in_channels: int, out_channels: int) -> list[nn.Module]:
        """A hidden conv, its norm and activation, and the stage's residual blocks."""
        return [
            same_conv(in_channels, out_channels, self.kernel_size, bias=self.norm == "none"),
            *norm_layers(self.norm, out_channels),
            ACTIVATION_LAYERS[self.activation](),
            *(
                ResidualBlock(out_channels, self.kernel_size, self.norm, self.activation)
                for _ in range(self.blocks)
            ),
        ]

    def config(self) -> dict:
        """The constructor's arguments, plain types only: enough to rebuild the network."""
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "widths": list(self.widths),
            "kernel_size": self.kernel_size,
            "pooling": self.pooling,
            "upsample_mode": self.upsample_mode,
            "activation": self.activation,
            "norm": self.norm,
            "blocks": self.blocks,
            "latent_channels": self.latent_channels,
            "skips": self.skips,
        }

    @classmethod
    def from_config(cls, settings: object) -> ConvAutoEncoder:
        """The network a saved config() describes; AelabError when it is not one (a checkpoint's
        settings are data from elsewhere, and a TypeError would not say whose they are)."""
        try:
            return cls(**settings)
        except (TypeError, ValueError) as error:  # unknown keys, not a dict, widths not numbers
            raise AelabError(
                f"The network settings {settings!r} are not a ConvAutoEncoder's ({error}); "
                "a checkpoint written by aelab holds ConvAutoEncoder.config()."
            ) from None

    @property
    def pooling_stages(self) -> int:
        """How many times the encoder halves the image (and the decoder doubles it back)."""
        return 0 if self.pooling == "none" else len(self.widths) - 1

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """(C, H, W) of the code for an input of that size, from the conv arithmetic.

        Each conv maps W to (W − K + 2P)/S + 1 with P = K // 2 and S = 1 (so W stays W for odd K);
        each 2×2 pooling, or 2×2 conv of stride 2, floors W / 2.
        """
        padding, stride = self.kernel_size // 2, 1
        size = [height, width]
        for index in range(len(self.widths)):
            if index > 0 and self.pooling != "none":
                size = [s // 2 for s in size]
            size = [(s - self.kernel_size + 2 * padding) // stride + 1 for s in size]
        return (self.latent_channels or self.widths[-1], size[0], size[1])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.skips:
            raise AelabError(
                "A network with model.skips=true decodes from its encoder's stages as well as "
                "from the code: run the whole network (forward) instead of decode()."
            )
        return self.decoder(z)

    def forward(self, x: torch.Tensor, upsamplings_left_out: int = 0) -> torch.Tensor:
        """The output; with `upsamplings_left_out`, at 1/2^that of the size (as many as there
        are): the decoder's last upsamplings skipped, so a wide head runs on fewer pixels."""
        if not (self.skips or upsamplings_left_out):
            return self.decoder(self.encoder(x))
        stages = []
        for layer in self.encoder:
            x = layer(x)
            if isinstance(layer, SkipSource):
                stages.append(x)
        upsamplings = [i for i, layer in enumerate(self.decoder) if isinstance(layer, UPSAMPLERS)]
        left_out = set(upsamplings[::-1][:upsamplings_left_out])  # the last ones
        for index, layer in enumerate(self.decoder):
            if isinstance(layer, SkipMerge):
                x = layer(x, stages.pop())
            elif index not in left_out:
                x = layer(x)
        return x


def bottleneck(
    model: ConvAutoEncoder,
    image_size: int,
    input_is_target: bool | None = None,
    target: str | None = None,
) -> dict:
    """Latent shape, size and compression versus the input, and a sentence saying what it means.

    `input_is_target` says whether the task reconstructs its input; by default, when the network
    gives back as many channels as it takes (reconstruction, not colorization's L → ab).
    `target` names a target that is not the network's output as such (the task's target_phrase).
    """
    if input_is_target is None:
        input_is_target = model.in_channels == model.out_channels
    skips = getattr(model, "skips", False)  # a path around the code: what it holds is no limit
    latent_shape = model.latent_shape(image_size, image_size)
    latent_size = math.prod(latent_shape)
    input_size = model.in_channels * image_size * image_size
    compression = input_size / latent_size
    shape = "×".join(map(str, latent_shape))
    described = (
        f"latent {shape} = {latent_size:,} values for a {model.in_channels}×{image_size}×"
        f"{image_size} = {input_size:,}-value input"
    )
    if not input_is_target:
        output_size = model.out_channels * image_size * image_size
        if latent_size < input_size:
            size = f"{compression:.1f}× compression"
        else:
            size = (
                "the same size" if latent_size == input_size else f"{1 / compression:.1f}× larger"
            )
        if skips:
            size += ", with skips around it"
        target = target or (
            f"{model.out_channels}×{image_size}×{image_size} = {output_size:,}-value target"
        )
        summary = (
            f"{described} ({size}); the {target} is not the input, so no latent size lets the "
            "network copy its way to the answer"
        )
    elif skips:
        summary = (
            f"{described}, but model.skips=true joins each encoder stage to the decoder around "
            "the code: NO bottleneck, so the network can learn to copy its input and near-perfect "
            "scores say nothing about compression"
        )
    elif latent_size < input_size:
        summary = f"{described}: {compression:.1f}× compression"
    else:
        summary = (
            f"latent {shape} = {latent_size:,} values for a {input_size:,}-value input: NO "
            f"bottleneck (the code is {1 / compression:.1f}× larger than the input), so the "
            "network can learn to copy its input and near-perfect scores say nothing about compression"
        )
    return {
        "latent_shape": list(latent_shape),
        "latent_size": latent_size,
        "input_size": input_size,
        "compression": round(compression, 4),
        "has_bottleneck": latent_size < input_size and not skips,
        "parameters": sum(p.numel() for p in model.parameters()),
        "summary": summary,
    }
