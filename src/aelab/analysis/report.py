"""python scripts/report.py DIR: what a run or a sweep logged, as DIR/report.md with PNG figures.

Nothing is retrained. Curves come from each run's history.jsonl (whatever its loggers), test scores
and model facts from metrics.json, speed from timing.json, labels from .hydra/overrides.yaml. Runs are grouped by
task and data: by the data identity the run recorded (data.json's "id"), else by its data settings
with the root resolved. The baselines are computed once per group, on the runs' own test split,
read from where their data.json says and refused when those images changed
(aelab.analysis.baselines.recorded_splits): never once per run, so a sweep of hundreds of runs
reads its data once.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import yaml
from hydra.utils import get_class
from omegaconf import OmegaConf

from aelab.analysis.baselines import (
    binary_entropy_floor,
    reconstruction_baselines,
    recorded_splits,
    to_unit,
)
from aelab.analysis.figures import (
    plot_curves,
    plot_image_grid,
    plot_losses,
    plot_rate_distortion,
)
from aelab.analysis.predict import colorize, load_colorizer
from aelab.analysis.runs import (
    STATUSES,
    Run,
    Unreadable,
    describe_differences,
    find_runs,
    read_json,
)
from aelab.config.trusted import add_trust_option, trusting
from aelab.data.color import lab_normalized_to_rgb, rgb_to_lab_normalized
from aelab.errors import AelabError
from aelab.runtime.sweeps import SweepJob, jobs_not_run

log = logging.getLogger(__name__)
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's: hydra.yaml 10× faster

# (score key, column header, decimals) per task; the table is sorted by psnr, highest first.
SCORE_COLUMNS = {
    "reconstruction": [
        ("bce", "bce", 4),
        ("bce_excess", "bce − floor", 4),
        ("mse", "mse", 5),
        ("psnr", "psnr (dB)", 2),
        ("ssim", "ssim", 4),
    ],
    "colorization": [
        ("psnr", "RGB psnr (dB)", 2),
        ("ssim", "ssim", 4),
        ("delta_e", "ΔE", 2),
        ("chroma", "chroma", 2),
        ("colorfulness", "colorfulness", 2),
        ("auc", "AuC (%)", 2),
        ("auc_rebalanced", "rebalanced AuC (%)", 2),
        ("ab_mse", "ab mse", 5),
    ],
}
PREVIEW_CAPTIONS = {
    "reconstruction": "val images (top) over their reconstructions (bottom)",
    "colorization": "rows: the gray input, the predicted colours, the true colours",
}
CODE_SIZES = {64, 192, 512, 1024}  # PCA's curve in the rate-distortion figure, beside the runs'
CODE_SIZE_KEYS = ("model.latent_channels", "widths", "model.widths")  # overrides that set it
FIGURE_IMAGES = 8  # test images in the colorization figure: the first of the test split
DATA_KEYS = (
    "source",
    "root",
    "image_size",
    "split",
    "val_fraction",
    "test_fraction",
    "split_seed",
    "subset",
)


@dataclass
class Row:
    """One line of a results table: a run or a baseline."""

    run: str
    label: str
    status: str
    scores: dict[str, float] = field(default_factory=dict)
    latent_size: int | None = None
    compression: float | None = None
    parameters: int | None = None
    seconds_per_epoch: float | None = None
    note: str = ""


@dataclass
class Baselines:
    rows: list[Row] = field(default_factory=list)
    bce_floor: float | None = None
    notes: list[str] = field(default_factory=list)
    linear_curve: list[tuple[int, float]] = field(default_factory=list)  # PCA's (k, test psnr)


@dataclass
class Group:
    """Runs of one task on the same data: they share a table and its baselines."""

    task: str
    data: dict  # the first run's data settings: enough to rebuild the split
    runs: list[Run]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="a run dir or a multirun dir")
    add_trust_option(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        with trusting(args.trust):
            path = write_report(args.directory)
    except AelabError as error:
        print(f"\naelab: {error}\n", file=sys.stderr)
        return 2
    print(path.read_text().split("\n## Runs\n")[0])
    print(f"Report: {path}")
    return 0


def write_report(directory: Path) -> Path:
    """Write directory/report.md and directory/figures/*.png; return the report's path."""
    directory = Path(directory)
    runs = [tableable(run) for run in find_runs(directory)]
    check_writable(directory)
    figures = directory / "figures"
    figures.mkdir(exist_ok=True)
    common, labels = describe_differences(runs)
    counts = {s: sum(run.status == s for run in runs) for s in STATUSES}
    not_run = unstarted_jobs(directory)
    counts["not run"] = len(not_run)
    lines = [
        f"# Report: {directory.resolve().name}",
        "",
        f"{len(runs) + counts['not run']} run(s): "
        + ", ".join(f"{n} {status}" for status, n in counts.items() if n)
        + ". "
        "Read from what the runs wrote (history.jsonl, metrics.json, timing.json, .hydra/); "
        "nothing was retrained.",
        "",
        f"Every run: `{' '.join(common) or '(defaults)'}`",
        "",
    ]
    grouped = [run for run in runs if run.config is not None]
    for index, group in enumerate(group_runs(grouped), start=1):
        lines += group_section(
            group, labels, directory, figures / f"val_psnr_{index}_{group.task}.png"
        )
    lines += unreadable_section([run for run in runs if run.config is None], labels)
    lines += not_run_section(not_run, directory)
    lines += ["## Runs", ""]
    for run in runs:
        lines += run_section(run, labels[run.name], directory, figures)
    path = directory / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def check_writable(directory: Path) -> None:
    """Refuse, before any data or curve is read, a DIR whose report.md or figures/ cannot be
    written: the work would end in an OSError traceback."""
    report, figures = directory / "report.md", directory / "figures"
    problems = [f"{report} is a directory"] if report.is_dir() else []
    if figures.exists() and not figures.is_dir():
        problems.append(f"{figures} is a file, where the report's figures go")
    writable = [directory, *(path for path in (report, figures) if path.exists())]
    problems += [
        f"{path} is not writable by you" for path in writable if not os.access(path, os.W_OK)
    ]
    if problems:
        raise AelabError(
            f"report.py writes {report} and {figures}/ and cannot here: {'; '.join(problems)}. "
            "Move what is in the way, or make the directory writable (chmod u+w), and run again."
        )


def group_runs(runs: list[Run]) -> list[Group]:
    """Runs grouped by task and data. A run without a data.json id (one that stopped before it
    recorded its data) joins the runs whose data settings it shares and that recorded an id."""
    keyed = [(run, task_name(run), data_settings(run)) for run in runs]
    ids = {}
    for run, task, settings in keyed:
        if (recorded := recorded_id(run)) is not None:
            ids[json.dumps([task, settings_key(settings)])] = recorded
    groups: dict[str, Group] = {}
    for run, task, settings in keyed:
        by_settings = json.dumps([task, settings_key(settings)])
        data = recorded_id(run) or ids.get(by_settings) or settings_key(settings)
        key = json.dumps([task, data])
        groups.setdefault(key, Group(task, settings, [])).runs.append(run)
    return list(groups.values())


def recorded_id(run: Run) -> str | None:
    """The "id" of the run's data.json: what makes two runs' data the same, however the root
    was spelled."""
    try:
        recorded = read_json(run.path / "data.json")
    except Unreadable:
        return None
    return (
        recorded.get("id")
        if isinstance(recorded, dict) and isinstance(recorded.get("id"), str)
        else None
    )


def settings_key(settings: dict) -> str:
    """A run's split settings with the root resolved (relative to where it ran, links followed).
    The cache dir is no part of it: it changes no image."""
    return json.dumps({key: settings[key] for key in DATA_KEYS}, sort_keys=True)


def tableable(run: Run) -> Run:
    """The run, or, if its config names no task this report has a table for, the run marked
    unreadable (without its config) with the reason."""
    if run.config is None or task_name(run) in SCORE_COLUMNS:
        return run
    known = ", ".join(SCORE_COLUMNS)
    reason = f"its task {run.config.task._target_} is not one this report knows ({known})"
    return replace(run, status="unreadable", detail=reason, config=None, metrics={})


def task_name(run: Run) -> str | None:
    """The run's task (reconstruction, colorization); None if its config names no task class."""
    if run.metrics.get("task") in SCORE_COLUMNS:
        return run.metrics["task"]
    if run.config is None:
        return None
    try:
        return getattr(get_class(run.config.task._target_), "name", None)
    except (ImportError, ValueError):  # hydra's get_class: no such module, or not a class
        return None


def data_settings(run: Run) -> dict:
    """The settings that decide a run's split, with a relative root made absolute as it ran."""
    data = OmegaConf.to_container(run.config.data, resolve=True)
    settings = {key: data.get(key) for key in DATA_KEYS}
    root = Path(run_cwd(run), Path(str(settings["root"])).expanduser())
    return {**settings, "root": os.path.realpath(root), "cache_dir": data.get("cache_dir")}


def run_cwd(run: Run) -> str:
    """The dir the run was started from (.hydra/hydra.yaml); "." where that cannot be read."""
    try:
        saved = yaml.load((run.path / ".hydra" / "hydra.yaml").read_text(), Loader=SAFE_LOADER)
    except (OSError, ValueError, yaml.YAMLError):
        return "."
    runtime = (saved.get("hydra") or {}).get("runtime") if isinstance(saved, dict) else None
    cwd = runtime.get("cwd") if isinstance(runtime, dict) else None
    return cwd if isinstance(cwd, str) else "."


def unreadable_section(runs: list[Run], labels: dict[str, str]) -> list[str]:
    """Runs whose config cannot be read: no group to table them in, so a list of their own."""
    if not runs:
        return []
    lines = ["## Unreadable runs", "", "| run | overrides | why |", "|---|---|---|"]
    for run in runs:
        cells = [f"`{run.name}`", labels[run.name], run.detail]
        lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    return [*lines, ""]


def unstarted_jobs(directory: Path) -> list[tuple[Path, SweepJob]]:
    """The jobs of the sweeps under directory that never started (a stopped sweep's rest): they
    have no run dir, so only their sweep's sweep.json tells of them."""
    try:
        return jobs_not_run(directory)
    except AelabError as error:  # an edited sweep.json: the runs are still reported
        log.warning("Jobs not run are not listed: %s", error)
        return []


def not_run_section(jobs: list[tuple[Path, SweepJob]], directory: Path) -> list[str]:
    if not jobs:
        return []
    lines = ["## Not run", "", "| sweep | job | overrides |", "|---|---|---|"]
    for sweep_dir, job in jobs:
        cells = [f"`{sweep_dir.relative_to(directory)}`", str(job.number), " ".join(job.overrides)]
        lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    sweeps = sorted({str(sweep_dir) for sweep_dir, _ in jobs})
    lines += ["", *(f"Continue with `python train.py resume={sweep}`." for sweep in sweeps)]
    return [*lines, ""]


def load_splits(group: Group) -> dict[str, torch.Tensor]:
    """The uint8 RGB train/val/test splits exactly as the runs had them (never downloads)."""
    return recorded_splits([run.path for run in group.runs], group.data)


def group_section(group: Group, labels: dict[str, str], directory: Path, chart: Path) -> list[str]:
    data = group.data
    sizes = next((run.metrics["data"] for run in group.runs if run.metrics.get("data")), {})
    sizes_text = ", ".join(
        f"{name} {sizes[name]:,}" for name in ("train", "val", "test") if name in sizes
    )
    lines = [
        f"## Test metrics: {group.task}",
        "",
        f"Data: {data['source']} `{data['root']}`, {data['split']} split"
        + (f" ({sizes_text} images)." if sizes_text else "."),
        "",
    ]
    baselines = baselines_for(group)
    done = [run_row(run, labels[run.name]) for run in group.runs if run.completed]
    if baselines.bce_floor is not None:
        for row in done + baselines.rows:
            row.scores["bce_excess"] = row.scores["bce"] - baselines.bce_floor
    ranked = sorted(done + baselines.rows, key=lambda row: -row.scores.get("psnr", float("-inf")))
    others = [run_row(run, labels[run.name]) for run in group.runs if not run.completed]
    lines += markdown_table(ranked + others, SCORE_COLUMNS[group.task])
    lines += ["", *[f"- {note}" for note in baselines.notes], ""]
    curves = {f"{run.name}: {labels[run.name]}": run.curves.get("val/psnr") for run in group.runs}
    curves = {label: curve for label, curve in curves.items() if curve}
    if curves:
        plot_curves(curves, chart, f"{group.task}: validation psnr per epoch", "val psnr (dB)")
        lines += [f"![val psnr per epoch]({_link(chart, directory)})", ""]
    if group.task == "colorization":
        grid = chart.with_name(chart.name.replace("val_psnr", "colorized"))
        lines += colorization_figure(group, labels, directory, grid)
    else:
        figure = chart.with_name(chart.name.replace("val_psnr", "rate_distortion"))
        lines += rate_distortion_figure(done, baselines.linear_curve, directory, figure)
    return lines


def rate_distortion_figure(
    done: list[Row], linear: list[tuple[int, float]], directory: Path, path: Path
) -> list[str]:
    """Test PSNR against code size, a line per network and PCA's, where the runs have codes
    smaller than the input (the figure an autoencoder study is about)."""
    series: dict[str, list[tuple[int, float]]] = {}
    for row in done:
        if row.latent_size in {k for k, _ in linear} and "psnr" in row.scores:
            series.setdefault(network_label(row.label), []).append(
                (row.latent_size, row.scores["psnr"])
            )
    if not series:
        return []
    plot_rate_distortion(series, linear, path)
    return [f"![test psnr against code size]({_link(path, directory)})", ""]


def network_label(label: str) -> str:
    """A run's label without the overrides that set its code size: the runs of one network at
    several code sizes share a line."""
    kept = [o for o in label.split() if o.split("=", 1)[0].lstrip("+~") not in CODE_SIZE_KEYS]
    return " ".join(kept) or "the default network"


def colorization_figure(
    group: Group, labels: dict[str, str], directory: Path, path: Path
) -> list[str]:
    """The first test images as rows: grey input | each completed run's colours | truth, each
    run's best checkpoint decoded as scripts/colorize.py does (its own temperature for loss=ce)."""
    done = [run for run in group.runs if run.completed and run.metrics.get("best_checkpoint")]
    if not done:
        return []
    try:
        images = to_unit(load_splits(group)["test"][:FIGURE_IMAGES])
    except AelabError as error:
        return [f"Colorized test images skipped: the runs' data could not be loaded. {error}", ""]
    lab = rgb_to_lab_normalized(images)
    grey = lab_normalized_to_rgb(torch.cat([lab[:, :1], torch.full_like(lab[:, 1:], 0.5)], 1))
    columns, skipped = {"grey input": grey}, []
    for run in done:
        try:
            colorizer = load_colorizer(run.path / run.metrics["best_checkpoint"])
        except AelabError as error:
            skipped.append(f"`{run.name}` ({error})")
            continue
        columns[f"{run.name}: {labels[run.name]}"] = colorize(colorizer, images)
    columns["truth"] = images
    plot_image_grid(columns, path)
    caption = (
        f"the first {len(images)} test images; columns: the grey input, each run's colours "
        "(best checkpoint), the true colours"
    )
    lines = [f"![{caption}]({_link(path, directory)})", "", f"*{caption}*", ""]
    if skipped:
        lines += [f"Left out of the figure: {'; '.join(skipped)}.", ""]
    return lines


def run_row(run: Run, label: str) -> Row:
    if not run.completed:
        detail = run.detail if len(run.detail) <= 200 else run.detail[:199] + "…"
        return Row(run.name, label, run.status, note=detail)
    model = run.metrics.get("model", {})
    bottleneck = model.get("has_bottleneck", True)
    no_bottleneck = (
        "code size unknown: the network has no encode()"
        if bottleneck is None
        else ""
        if bottleneck
        else "no bottleneck: the code is no smaller than the input, or skips go around it"
    )
    note = "; ".join(filter(None, [no_bottleneck, run.detail]))  # detail: an unreadable timing.json
    scores = {key: value for key, value in run.metrics.get("test", {}).items() if "/" not in key}
    return Row(
        run.name,
        label,
        "completed",
        scores,
        model.get("latent_size"),
        model.get("compression"),
        model.get("parameters"),
        run.timing.get("mean_seconds_per_epoch"),
        note,
    )


def baselines_for(group: Group) -> Baselines:
    """What the group's runs are measured against: baseline rows, the BCE floor, notes on both."""
    done = [run for run in group.runs if run.completed]
    if group.task == "colorization":
        return colorization_baselines(done)
    try:
        splits = load_splits(group)
    except AelabError as error:
        return Baselines(notes=[f"Baselines skipped: the runs' data could not be loaded. {error}"])
    test = to_unit(splits["test"])
    input_size = test[0].numel()
    latent_sizes = {run.metrics["model"]["latent_size"] for run in done} - {None}  # None: unknown
    cache_dir = Path(group.data["cache_dir"] or "~/.cache/aelab").expanduser()
    computed = reconstruction_baselines(splits, sorted(latent_sizes | CODE_SIZES), cache_dir)
    linear = [(b.latent_size, b.scores["psnr"]) for b in computed if b.name.startswith("PCA")]
    rows = [
        Row(
            "baseline",
            baseline.name,
            "baseline",
            baseline.scores,
            baseline.latent_size,
            round(input_size / baseline.latent_size, 4),
            baseline.parameters,
        )
        for baseline in computed
        if not baseline.name.startswith("PCA") or baseline.latent_size in latent_sizes
    ]
    floor = binary_entropy_floor(test)
    notes = [
        f"BCE against continuous pixel values cannot reach 0: its floor, reached only by a perfect "
        f"reconstruction, is the mean binary entropy of the test pixels, {floor:.4f} here. "
        "`bce − floor` is the part a model can still remove.",
        "PCA, k = n: the best linear autoencoder with an n-value code, fitted on the train split "
        f"({len(splits['train']):,} images); a code of {input_size:,} values or more copies the "
        "input exactly, so runs without a bottleneck get no PCA row.",
    ]
    return Baselines(rows, floor, notes, linear)


def colorization_baselines(done: list[Run]) -> Baselines:
    """The grayscale prediction (a = b = 0), which every colorization run scores on its test split."""
    test = done[0].metrics.get("test", {}) if done else {}
    scores = {
        key.removeprefix("baseline/"): v for key, v in test.items() if key.startswith("baseline/")
    }
    if not scores:
        return Baselines()
    row = Row("baseline", "grayscale (a = b = 0)", "baseline", scores, parameters=0)
    truth_scores = {
        name: test[f"{name}_true"]
        for name in ("chroma", "colorfulness")
        if isinstance(test.get(f"{name}_true"), int | float)
    }
    truth = Row("truth", "the true colours", "truth", truth_scores)
    note = (
        "ΔE: mean CIE76 colour difference from the true image (Lab units). chroma: mean √(a² + b²) "
        f"of the predicted colours; the true colours have {test.get('chroma_true', float('nan')):.2f}, "
        "so a chroma far below it means washed-out, near-gray predictions. colorfulness: Hasler "
        "and Süsstrunk's (2003) measure on 0-255 RGB. AuC: the area under the curve of the "
        "fraction of pixels whose ab error is within t, for t from 0 to 150 (Zhang et al. 2016), "
        "in %; rebalanced: pixels weighted by the inverse training frequency of their ab bin, so "
        "rare (saturated) colours count as much as common (greyish) ones."
    )
    return Baselines([row, truth], notes=[note])


def markdown_table(rows: list[Row], score_columns: list[tuple[str, str, int]]) -> list[str]:
    headers = ["run", "overrides", "status", *(header for _, header, _ in score_columns)]
    headers += ["latent", "compression", "parameters", "s/epoch", "note"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        reference = row.status in ("baseline", "truth")
        cells = [row.status if reference else f"`{row.run}`", row.label, row.status]
        cells += [_number(row.scores.get(key), digits) for key, _, digits in score_columns]
        cells += [
            _number(row.latent_size, 0),
            f"{row.compression:.2f}×" if row.compression else "—",
            _number(row.parameters, 0),
            _number(row.seconds_per_epoch, 2),
            row.note,
        ]
        lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    return lines


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _number(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def run_section(run: Run, label: str, directory: Path, figures: Path) -> list[str]:
    lines = [f"### `{run.name}`: {label}", ""]
    if not run.completed:
        lines += [f"**{run.status}**: {run.detail}", ""]
    loss = run.metrics.get("loss") or (run.config.task.get("loss", "") if run.config else "")
    chart = figures / f"loss_{run.name.replace('/', '_')}.png"
    if plot_losses(run.curves, loss, chart, f"{run.name}: {label}"):
        lines += [f"![loss per epoch]({_link(chart, directory)})", ""]
    else:
        lines += ["No curves: no history.jsonl, or it stopped before its first epoch.", ""]
    preview = run.path / "preview.png"
    if preview.is_file():
        caption = PREVIEW_CAPTIONS.get(task_name(run) or "", "preview")
        lines += [f"![{caption}]({_link(preview, directory)})", "", f"*{caption}*", ""]
    return lines


def _link(path: Path, directory: Path) -> str:
    return Path(os.path.relpath(path, directory)).as_posix()


if __name__ == "__main__":
    sys.exit(main())
