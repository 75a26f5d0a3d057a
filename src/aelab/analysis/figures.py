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


def plot_image_grid(columns: dict[str, torch.Tensor], path: Path, title: str = "") -> None:
    """Images as a grid: one column per named (N, 3, H, W) batch in [0, 1], one row per image."""
    names = list(columns)
    rows = len(next(iter(columns.values())))
    figure = Figure(figsize=(1.15 * len(names), 1.0 * rows + 0.5), layout="constrained")
    axes = figure.subplots(rows, len(names), squeeze=False)
    for column, name in enumerate(names):
        images = columns[name].clamp(0, 1).permute(0, 2, 3, 1).numpy()
        for row in range(rows):
            axes[row][column].imshow(images[row], interpolation="nearest")
            axes[row][column].set_axis_off()
        axes[0][column].set_title(textwrap.fill(name, 18), fontsize=7)  # long labels wrap
    if title:
        figure.suptitle(title, fontsize=9)
    figure.savefig(path, dpi=90)
