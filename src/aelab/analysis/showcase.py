"""python scripts/showcase.py: one figure of what trained checkpoints do to the same test images,
row by row: the images, a reconstruction, the grey input of colorization, each colorization.

The images are the first of the test split of the reconstruction checkpoint's run, rebuilt from
its .hydra/config.yaml as scripts/report.py does (never downloaded).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from aelab.analysis.baselines import recorded_splits, to_unit
from aelab.analysis.figures import plot_image_grid
from aelab.analysis.predict import colorize, load_colorizer, reconstruct
from aelab.analysis.report import data_settings
from aelab.analysis.runs import read_run
from aelab.config.trusted import add_trust_option, trusting
from aelab.data.color import lab_normalized_to_rgb, rgb_to_lab_normalized
from aelab.errors import AelabError
from aelab.models.checkpoint import load_network, read_checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--reconstruction", type=Path, required=True, metavar="CKPT",
        help="a reconstruction run's checkpoint (RUN/checkpoints/best.ckpt); its run's test "
        "split gives the images",
    )  # fmt: skip
    parser.add_argument(
        "--colorization", type=Path, action="append", required=True, metavar="CKPT",
        help="a colorization checkpoint; give it again for one row per checkpoint",
    )  # fmt: skip
    parser.add_argument("--images", type=int, default=8, help="test images (columns); default 8")
    parser.add_argument("--out", type=Path, default=Path("docs/figures/showcase.png"))
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    add_trust_option(parser)
    args = parser.parse_args(argv)
    try:
        if args.images < 1:
            raise AelabError(f"--images {args.images}: give a positive number of test images.")
        if args.out.suffix.lower() != ".png" or args.out.is_dir():
            raise AelabError(
                f"--out {args.out}: give a PNG file's path, e.g. figures/showcase.png."
            )
        if args.out.exists() and not args.overwrite:
            raise AelabError(f"{args.out} exists; give --overwrite to replace it.")
        with trusting(args.trust):
            rows = showcase_rows(args.reconstruction, args.colorization, args.images)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        plot_image_grid(rows, args.out, images_across=True)
    except AelabError as error:
        print(f"\naelab: {error}\n", file=sys.stderr)
        return 2
    print(f"Wrote {args.out}")
    return 0


def showcase_rows(
    reconstruction: Path, colorizations: list[Path], count: int
) -> dict[str, torch.Tensor]:
    """Named rows of (count, 3, H, W) RGB images in [0, 1]."""
    network = load_network(reconstruction, "reconstruction")
    images = to_unit(run_test_split(reconstruction)[:count])
    lightness = rgb_to_lab_normalized(images)[:, :1]
    grey = lab_normalized_to_rgb(torch.cat([lightness, torch.full_like(images[:, 1:], 0.5)], 1))
    rows = {
        "test images": images,
        f"reconstructed ({loss_of(reconstruction)})": reconstruct(network, images),
        "grey (L) input": grey,
    }
    for path in colorizations:
        label = f"colorized ({loss_of(path)})"
        label = label if label not in rows else f"{label} {path.parent.parent.name}"
        rows[label] = colorize(load_colorizer(path), images)
    return rows


def run_test_split(checkpoint: Path) -> torch.Tensor:
    """The uint8 test split of the run the checkpoint belongs to (RUN/checkpoints/NAME.ckpt)."""
    run_dir = checkpoint.resolve().parent.parent
    run = read_run(run_dir, run_dir.name)
    if run.config is None:
        raise AelabError(
            f"{checkpoint}: its run's config could not be read ({run.detail}), so its test "
            "images are unknown; give a checkpoint where python train.py left it "
            "(RUN/checkpoints/best.ckpt)."
        )
    return recorded_splits([run_dir], data_settings(run))["test"]


def loss_of(checkpoint: Path) -> str:
    return f"loss={read_checkpoint(checkpoint)['aelab'].get('loss')}"
