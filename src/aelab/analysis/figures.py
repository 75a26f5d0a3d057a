"""The report's charts as PNG files (matplotlib's object API: no pyplot state, no display needed)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import torch
from matplotlib.figure import Figure

from aelab.analysis.runs import Curve


def plot_curves(
    curves: dict[str, Curve], path: Path, title: str, ylabel: str, legend_title: str = ""
) -> None:
    """One line per named curve against the epoch (shown from 1), saved as a PNG."""
    figure = Figure(figsize=(7, 4.2), layout="constrained")
    axes = figure.subplots()
    for label, curve in curves.items():
        epochs, values = zip(*sorted(curve), strict=True)
        axes.plot([epoch + 1 for epoch in epochs], values, marker="o", markersize=3, label=label)
    axes.set(title=title, xlabel="epoch", ylabel=ylabel)
    axes.xaxis.get_major_locator().set_params(integer=True)
    axes.ticklabel_format(axis="y", useOffset=False)
    axes.grid(alpha=0.3)
    axes.legend(title=legend_title or None, fontsize="small")
    figure.savefig(path, dpi=110)


def plot_losses(curves: dict[str, Curve], loss: str, path: Path, title: str) -> bool:
    """A run's training and validation loss per epoch; False when it logged neither."""
    lines = {
        name: curves[tag]
        for name, tag in (("train", "train/loss"), ("val", "val/loss"))
        if curves.get(tag)
    }
    if not lines:
        return False
    plot_curves(lines, path, title, f"{loss} loss")
    return True


def plot_image_grid(
    columns: dict[str, torch.Tensor], path: Path, title: str = "", images_across: bool = False
) -> None:
    """Images as a grid: one column per named (N, 3, H, W) batch in [0, 1], one row per image;
    images_across turns it: one row per batch, named on the left."""
    names = list(columns)
    count = len(next(iter(columns.values())))
    shape = (len(names), count) if images_across else (count, len(names))
    size = (
        (1.0 * count + 1.2, 1.0 * len(names) + 0.3)
        if images_across
        else (1.15 * len(names), 1.0 * count + 0.5)
    )
    figure = Figure(figsize=size, layout="constrained")
    axes = figure.subplots(*shape, squeeze=False)
    for n, name in enumerate(names):
        images = columns[name].clamp(0, 1).permute(0, 2, 3, 1).numpy()
        cells = axes[n] if images_across else [axes[i][n] for i in range(count)]
        for cell, image in zip(cells, images, strict=True):
            cell.imshow(image, interpolation="nearest")
            cell.set_xticks([]), cell.set_yticks([])
            for spine in cell.spines.values():
                spine.set_visible(False)
        label = textwrap.fill(name, 16 if images_across else 18)  # long labels wrap
        if images_across:
            cells[0].set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center")
        else:
            cells[0].set_title(label, fontsize=7)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.savefig(path, dpi=90)
