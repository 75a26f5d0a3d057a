"""The report's charts as PNG files (matplotlib's object API: no pyplot state, no display needed)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import torch
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import NullLocator

from aelab.analysis.runs import Curve

NAMED_CURVES = 10  # of more curves, the 10 that end highest (one colour each) are named
AXES_SIZE = (6.0, 3.6)  # inches: the plot itself, whatever its legend
RUN_AXES_SIZE = (4.0, 2.4)  # a run's own loss chart: one of possibly hundreds
LEGEND_INCHES_PER_CHARACTER = 0.065  # fontsize "small" at the report's dpi


def plot_curves(
    curves: dict[str, Curve],
    path: Path,
    title: str,
    ylabel: str,
    legend_title: str = "",
    axes_size: tuple[float, float] = AXES_SIZE,
) -> None:
    """One line per named curve against the epoch (shown from 1), saved as a PNG, with its legend
    beside the axes, never over the lines. Of more than NAMED_CURVES curves, those whose last value
    is highest are coloured and named, the rest drawn thin and grey (their values are in the
    report's table). Fixed margins, no layout engine: a sweep's hundreds of charts stay quick."""
    ranked = sorted(curves, key=lambda label: -sorted(curves[label])[-1][1])
    named = ranked[:NAMED_CURVES]
    legend = [
        *named,
        *([f"{len(curves) - len(named)} more (grey)"] if len(curves) > len(named) else []),
    ]
    legend_width = 0.6 + LEGEND_INCHES_PER_CHARACTER * max(map(len, [*legend, legend_title]))
    left, right, bottom, top = 1.0, legend_width + 0.2, 0.55, 0.45  # inches around the axes
    width, height = axes_size[0] + left + right, axes_size[1] + bottom + top
    figure = Figure(figsize=(width, height))
    figure.subplots_adjust(
        left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height
    )
    axes = figure.subplots()
    for label in reversed(ranked):  # the named ones drawn last, on top
        epochs, values = zip(*sorted(curves[label]), strict=True)
        x = [epoch + 1 for epoch in epochs]
        if label in named:
            axes.plot(x, values, marker="o", markersize=3, label=label, zorder=3)
        else:
            axes.plot(x, values, color="0.75", linewidth=0.7, zorder=2)
    axes.set(title=title, xlabel="epoch", ylabel=ylabel)
    axes.xaxis.get_major_locator().set_params(integer=True)
    axes.ticklabel_format(axis="y", useOffset=False)
    axes.grid(alpha=0.3)
    handles, labels = axes.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda index: named.index(labels[index]))
    handles, labels = [handles[i] for i in order], [labels[i] for i in order]
    if len(curves) > len(named):
        handles.append(Line2D([], [], color="0.75", linewidth=0.7))
        labels.append(legend[-1])
    axes.legend(
        handles, labels, title=legend_title or None, fontsize="small",
        loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0,
    )  # fmt: skip
    figure.savefig(path, dpi=100)


def plot_rate_distortion(
    series: dict[str, list[tuple[int, float]]], linear: list[tuple[int, float]], path: Path
) -> None:
    """Test PSNR against code size: one line per network (its runs at several code sizes), and
    PCA's curve, the best linear code of each size, as the line to beat."""
    figure = Figure(figsize=(7.5, 4.2))
    figure.subplots_adjust(left=0.1, right=0.68, bottom=0.13, top=0.9)
    axes = figure.subplots()
    if linear:
        sizes, psnr = zip(*sorted(linear), strict=True)
        axes.plot(sizes, psnr, color="0.3", linestyle="--", marker="s", markersize=3, label="PCA")
    for label, points in sorted(series.items()):
        sizes, psnr = zip(*sorted(points), strict=True)
        axes.plot(sizes, psnr, marker="o", markersize=4, label=textwrap.fill(label, 32))
    axes.set_xscale("log", base=2)
    ticks = sorted({k for points in [linear, *series.values()] for k, _ in points})
    axes.set_xticks(ticks, [f"{k:,}" for k in ticks])
    axes.xaxis.set_minor_locator(NullLocator())
    axes.set(title="reconstruction: test psnr against code size", xlabel="code size (values)")
    axes.set(ylabel="test psnr (dB)")
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)
    figure.savefig(path, dpi=100)


def plot_losses(curves: dict[str, Curve], loss: str, path: Path, title: str) -> bool:
    """A run's training and validation loss per epoch; False when it logged neither."""
    lines = {
        name: curves[tag]
        for name, tag in (("train", "train/loss"), ("val", "val/loss"))
        if curves.get(tag)
    }
    if not lines:
        return False
    plot_curves(lines, path, title, f"{loss} loss", axes_size=RUN_AXES_SIZE)
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
