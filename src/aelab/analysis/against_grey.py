"""python scripts/against_grey.py CKPT: where a colorization checkpoint wins and loses against grey.

The test psnr is a mean of per-image psnr (capped at 100 dB), so a few photos that are grey already
(grey scores them 60 dB or more) can outweigh a better colour on thousands of others. This splits the
difference per image by how well grey does, on the test split of the checkpoint's run.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch

from aelab.analysis.baselines import to_unit
from aelab.analysis.predict import load_colorizer, predict_lab
from aelab.analysis.showcase import run_test_split
from aelab.config.trusted import add_trust_option, trusting
from aelab.data.color import lab_normalized_to_rgb, rgb_to_lab_normalized
from aelab.errors import AelabError
from aelab.tasks import metrics

GREY_PSNR_EDGES = (25.0, 30.0, 35.0, 40.0)  # dB: the bins of grey's per-image psnr
GREY_PHOTO_DB = 60.0  # grey scores a photo without colour this well (JPEG and Lab rounding aside)


def per_image_psnr(colorizer, images: torch.Tensor, batch: int = 500) -> dict[str, torch.Tensor]:
    """Per-image RGB psnr of the colorizer's and of grey's (a = b = 0) images, as the run scores
    them (the true L kept), and their per-image RGB mse."""
    scores: dict[str, list[torch.Tensor]] = {
        "model": [],
        "grey": [],
        "model_mse": [],
        "grey_mse": [],
    }
    for chunk in to_unit(images).split(batch):
        truth = lab_normalized_to_rgb(rgb_to_lab_normalized(chunk))
        predicted = predict_lab(colorizer, chunk)
        grey = torch.cat([predicted[:, :1], torch.full_like(predicted[:, 1:], 0.5)], 1)
        for name, lab in (("model", predicted), ("grey", grey)):
            rgb = lab_normalized_to_rgb(lab)
            scores[name].append(metrics.psnr(rgb, truth))
            scores[f"{name}_mse"].append(metrics.mse(rgb, truth))
    return {name: torch.cat(values) for name, values in scores.items()}


def breakdown(scores: dict[str, torch.Tensor]) -> str:
    """A markdown table: per bin of grey's psnr, the images and the model's gain over grey."""
    model, grey = scores["model"], scores["grey"]
    gain, count = model - grey, len(model)
    grey_photos = grey >= GREY_PHOTO_DB
    edges = (float("-inf"), *GREY_PSNR_EDGES, GREY_PHOTO_DB)
    lines = [
        "| grey's psnr (dB) | images | model better on | mean gain (dB) | share of the mean (dB) |",
        "|---|---:|---:|---:|---:|",
    ]
    bins = [
        ((grey >= lo) & (grey < hi), f"{lo:g} to {hi:g}") for lo, hi in itertools.pairwise(edges)
    ]
    bins[0] = (bins[0][0], f"below {GREY_PSNR_EDGES[0]:g}")
    bins.append((grey_photos, f"{GREY_PHOTO_DB:g} or more (a grey photo)"))
    for chosen, label in bins:
        if chosen.any():
            lines.append(
                f"| {label} | {int(chosen.sum()):,} | {(gain[chosen] > 0).float().mean():.0%} | "
                f"{gain[chosen].mean():+.2f} | {gain[chosen].sum() / count:+.3f} |"
            )
    split_psnr = {n: -10 * torch.log10(scores[f"{n}_mse"].mean()) for n in ("model", "grey")}
    lines += [
        "",
        f"Mean per-image psnr: model {model.mean():.3f} dB, grey {grey.mean():.3f} dB "
        f"({gain.mean():+.3f}); without the {int(grey_photos.sum())} grey photos: "
        f"{gain[~grey_photos].mean():+.3f} dB. psnr of the split's mean error: model "
        f"{split_psnr['model']:.2f} dB, grey {split_psnr['grey']:.2f} dB.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "checkpoint", type=Path, help="a colorization run's RUN/checkpoints/best.ckpt"
    )
    parser.add_argument("--temperature", type=float, help="a loss=ce run's decoding temperature")
    add_trust_option(parser)
    args = parser.parse_args(argv)
    try:
        with trusting(args.trust):
            colorizer = load_colorizer(args.checkpoint, args.temperature)
            images = run_test_split(args.checkpoint)
        with torch.no_grad():
            print(breakdown(per_image_psnr(colorizer, images)))
    except AelabError as error:
        print(f"\naelab: {error}\n", file=sys.stderr)
        return 2
    return 0
