"""Use a trained checkpoint on any images: colorize (L → ab) or reconstruct, at any size.

Checkpoints are read with torch.load(weights_only=True): a checkpoint from elsewhere is data, and
a pickle that would run code is refused, not executed.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from rich.progress import track

from aelab.data.color import lab_to_rgb_keeping_lightness, rgb_to_lab_normalized
from aelab.data.image_io import open_image, read_rgb_float
from aelab.errors import AelabError
from aelab.models import ConvAutoEncoder
from aelab.models.checkpoint import load_network, read_checkpoint
from aelab.tasks.colorization import (
    DEFAULT_STRIDE,
    DEFAULT_TEMPERATURE,
    classifier_logits,
    decode_bins,
)


def read_rgb(path: Path) -> torch.Tensor:
    """An image file as a float RGB tensor (1, 3, H, W) in [0, 1]; grey becomes R = G = B.

    16-bit and float images are scaled by aelab.data.image_io's rule, not clipped at 255.
    """
    if not path.is_file():
        raise AelabError(f"The input image {path} does not exist.")
    return torch.from_numpy(read_rgb_float(path)).permute(2, 0, 1).unsqueeze(0)


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


def colorize(network: ConvAutoEncoder | Colorizer, rgb: torch.Tensor) -> torch.Tensor:
    """RGB (or grey) image → a colour image with the same lightness and predicted a, b."""
    lightness = rgb_to_lab_normalized(rgb)[:, :1]
    return lab_to_rgb_keeping_lightness(torch.cat([lightness, run_padded(network, lightness)], 1))


def reconstruct(network: ConvAutoEncoder, rgb: torch.Tensor) -> torch.Tensor:
    return run_padded(network, rgb)


def write_png(rgb: torch.Tensor, path: Path) -> None:
    """Write through a temporary file and a rename: a stopped run leaves no half-written PNG."""
    array = (rgb[0].permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        Image.fromarray(array).save(temporary, format="PNG")
        temporary.replace(path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise AelabError(f"{path} could not be written ({error}).") from None


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
            with open_image(path):
                pass
        try:
            args.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise AelabError(f"--out-dir {args.out_dir} could not be created ({error}).") from None
        convert = colorize if task == "colorization" else reconstruct
        pairs = list(zip(args.inputs, outputs, strict=True))
        for path, out in track(pairs, description=f"{verb}", disable=len(pairs) < 2):
            write_png(convert(network, read_rgb(path)), out)
    except AelabError as error:
        print(f"aelab: {error}", file=sys.stderr)
        return 2
    print(f"Wrote {len(args.inputs)} image(s) to {args.out_dir}")
    return 0
