"""Use a trained checkpoint on any images: colorize (L → ab) or reconstruct, at any size.

Checkpoints are read with torch.load(weights_only=True): a checkpoint from elsewhere is data, and
a pickle that would run code is refused, not executed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from rich.progress import track

from aelab.data.color import lab_to_rgb_keeping_lightness, rgb_to_lab_normalized
from aelab.errors import AelabError
from aelab.models import ConvAutoEncoder
from aelab.models.checkpoint import load_network


def read_rgb(path: Path) -> torch.Tensor:
    """An image file as a float RGB tensor (1, 3, H, W) in [0, 1]; grayscale becomes R = G = B."""
    if not path.is_file():
        raise AelabError(f"The input image {path} does not exist.")
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise AelabError(f"{path} could not be read as an image ({error}).") from None
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)


def run_padded(network: ConvAutoEncoder, inputs: torch.Tensor) -> torch.Tensor:
    """The network's output at the input's size: pad to a multiple of 2^poolings, then crop."""
    multiple = 2**network.pooling_stages
    height, width = inputs.shape[-2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    padded = F.pad(inputs, (0, pad_w, 0, pad_h), mode="replicate")
    with torch.no_grad():
        return torch.sigmoid(network(padded))[..., :height, :width]


def colorize(network: ConvAutoEncoder, rgb: torch.Tensor) -> torch.Tensor:
    """RGB (or grey) image → a colour image with the same lightness and predicted a, b."""
    lightness = rgb_to_lab_normalized(rgb)[:, :1]
    return lab_to_rgb_keeping_lightness(torch.cat([lightness, run_padded(network, lightness)], 1))


def reconstruct(network: ConvAutoEncoder, rgb: torch.Tensor) -> torch.Tensor:
    return run_padded(network, rgb)


def write_png(rgb: torch.Tensor, path: Path) -> None:
    array = (rgb[0].permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    Image.fromarray(array).save(path)


def main(task: str, argv: list[str] | None = None) -> int:
    """The command line of scripts/colorize.py and scripts/reconstruct.py."""
    verb = "Colorize" if task == "colorization" else "Reconstruct"
    parser = argparse.ArgumentParser(
        description=f"{verb} images of any size with a trained aelab {task} checkpoint; "
        "writes one PNG per input, named after it."
    )
    parser.add_argument("inputs", nargs="+", type=Path, help="image files (jpg, png, …)")
    parser.add_argument("--ckpt", required=True, type=Path, help="a run's checkpoints/best.ckpt")
    parser.add_argument("--out-dir", required=True, type=Path, help="where the PNGs go")
    args = parser.parse_args(argv)
    try:
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
        args.out_dir.mkdir(parents=True, exist_ok=True)
        convert = colorize if task == "colorization" else reconstruct
        for path in track(args.inputs, description=f"{verb}", disable=len(args.inputs) < 2):
            write_png(convert(network, read_rgb(path)), args.out_dir / f"{path.stem}.png")
    except AelabError as error:
        print(f"aelab: {error}", file=sys.stderr)
        return 2
    print(f"Wrote {len(args.inputs)} image(s) to {args.out_dir}")
    return 0
