"""Training throughput of aelab against a bare loop and the usual recipe: python scripts/benchmark.py --help.

(a) aelab: Trainer + DataModule + task exactly as train.py builds them (logging, checkpointing and
    the progress bar as configured by default): training images/s per epoch from timing.json;
(b) floor: a bare PyTorch loop over the same network, batch size and in-memory uint8 data;
(c) recipe: the usual Lightning recipe — ImageFolder with per-sample ToTensor (and per-sample Lab
    for colorization), shuffled DataLoader with worker processes — feeding the same task.
Each path runs `repeats` times, the paths taking turns; each run trains `epochs` epochs of `batches`
batches, the first of which warms up and is not counted. The table gives the median and the range
of the counted epochs, and the ratios a/b and a/c repeat by repeat (their median and range).

A second table compares (a) and (b) inside the same runs: blocks of aelab's steps and of bare steps
take turns (BareStepsBetween), which cancels the machine's slow and fast spells that make separate
runs differ by ±10 % here, and gives aelab's cost per step in milliseconds. With --lightning-alone,
the same comparison for aelab's task and data in a Trainer with every optional feature off splits
that cost into Lightning's own training loop and what train.py's features add.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException
from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.datasets import ImageFolder

from aelab import CONFIG_DIR
from aelab.data.color import rgb_to_lab_normalized
from aelab.runtime.heap import frozen_heap
from aelab.runtime.train import build, train

TASKS = ("reconstruction", "colorization")
# The model group's presets; `custom` needs the user's own _target_.
PRESETS = tuple(
    sorted(path.stem for path in (CONFIG_DIR / "model").glob("*.yaml") if path.stem != "custom")
)
PATHS = ("aelab", "floor", "recipe")


def compose_config(overrides: list[str], output_dir: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=[*overrides, f"paths.output_dir={output_dir}"])


def run_limits(epochs: int, batches: int) -> list[str]:
    return [f"trainer.max_epochs={epochs}", f"+trainer.limit_train_batches={batches}"]


def aelab_rates(overrides: list[str], epochs: int, batches: int) -> list[float]:
    """(a): aelab.runtime.train.train itself, limited to `batches` training batches per epoch."""
    with tempfile.TemporaryDirectory() as run_dir:
        train(compose_config([*overrides, *run_limits(epochs, batches)], run_dir), Path(run_dir))
        return json.loads((Path(run_dir) / "timing.json").read_text())["images_per_second"]


def bare_step(
    task, datamodule, images: torch.Tensor, indices: torch.Tensor, optimizer, precision: str
) -> None:
    """One training step with nothing around it: the floor's unit of work, under the autocast
    that Lightning's bf16 precisions put around a training step."""
    inputs, targets = task.split_batch(datamodule.to_model_space(images[indices]))
    bf16 = str(precision).startswith("bf16")
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = task.loss_fn(task(inputs), targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def floor_rates(
    overrides: list[str], epochs: int, batches: int, device: torch.device
) -> list[float]:
    """(b): index-slice batches of the in-memory split, straight into the same network."""
    cfg = compose_config(overrides, "unused")
    L.seed_everything(cfg.seed, verbose=False)
    task, datamodule = build(cfg)
    datamodule.setup("fit")
    task = task.to(device)
    images = datamodule.splits["train"].to(device)
    optimizer = task.optimizer_factory(task.parameters())  # the bare loop steps no scheduler
    rates = []
    with frozen_heap():  # as aelab trains: no full-heap collection inside an epoch
        for _ in range(epochs):
            order = torch.randperm(len(images), device=device)[: batches * datamodule.batch_size]
            start = time.perf_counter()
            for indices in order.split(datamodule.batch_size):
                bare_step(task, datamodule, images, indices, optimizer, cfg.trainer.precision)
            if device.type == "cuda":
                torch.cuda.synchronize()
            rates.append(len(order) / (time.perf_counter() - start))
    return rates


class BareStepsBetween(L.Callback):
    """Inside one aelab run: after each block of aelab's training steps, as many bare steps
    (bare_step) on a copy of the network, each block timed.

    The two alternate about every quarter second, so this machine's slow and fast spells, which
    last longer, fall on both alike: the a/b with the least noise this machine allows. A block of
    aelab's steps runs from one step's start to the start of the step after the block (or to the
    epoch's validation), so it holds everything aelab does in those steps: fetching, hooks, every
    callback, the step checkpoint every 100 steps. The first epoch warms both up, untimed.
    """

    def __init__(self, output: str, block: int = 10) -> None:
        self.output, self.block = output, block
        self.aelab_seconds: list[float] = []
        self.bare_seconds: list[float] = []

    def on_train_start(self, trainer: L.Trainer, task: L.LightningModule) -> None:
        self.bare = copy.deepcopy(task)
        self.optimizer = self.bare.optimizer_factory(self.bare.parameters())
        self.images = trainer.datamodule.splits["train"].to(task.device)
        self.block = min(self.block, trainer.num_training_batches)  # a tiny split: one block/epoch

    def on_train_epoch_start(self, trainer: L.Trainer, task: L.LightningModule) -> None:
        self._steps, self._mark, self._last_block_end = 0, self._now(task), None

    def on_train_batch_start(self, trainer, task, batch, batch_idx: int) -> None:
        if self._steps == self.block:
            self._close_block(trainer, task, self._now(task))
        self._steps += 1

    def on_validation_start(self, trainer: L.Trainer, task: L.LightningModule) -> None:
        # The epoch's last block ends here; its bare steps wait for on_train_epoch_end, because
        # validation runs under inference mode.
        if not trainer.sanity_checking and self._steps == self.block:
            self._steps, self._last_block_end = -1, self._now(task)

    def on_train_epoch_end(self, trainer: L.Trainer, task: L.LightningModule) -> None:
        if self._steps == self.block:  # an epoch without validation
            self._last_block_end = self._now(task)
        if self._last_block_end is not None:
            self._close_block(trainer, task, self._last_block_end)
        self._last_block_end = None  # a last, shorter block is left out

    def _close_block(self, trainer: L.Trainer, task: L.LightningModule, end: float) -> None:
        start = self._now(task)
        datamodule = trainer.datamodule
        shape = (self.block, datamodule.batch_size)
        for indices in torch.randint(len(self.images), shape, device=self.images.device):
            bare_step(
                self.bare, datamodule, self.images, indices, self.optimizer, trainer.precision
            )
        done = self._now(task)
        if trainer.current_epoch > 0:
            self.aelab_seconds.append(end - self._mark)
            self.bare_seconds.append(done - start)
        self._steps, self._mark = 0, done

    def on_train_end(self, trainer: L.Trainer, task: L.LightningModule) -> None:
        blocks = {
            "block": self.block,
            "aelab": self.aelab_seconds,
            "bare": self.bare_seconds,
            "batch_size": trainer.datamodule.batch_size,
            "parameters": sum(p.numel() for p in task.parameters()),
        }
        Path(self.output).write_text(json.dumps(blocks))

    @staticmethod
    def _now(task: L.LightningModule) -> float:
        if task.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()


def within_run_seconds(overrides: list[str], epochs: int, batches: int) -> dict:
    """aelab's and the bare loop's seconds per block, alternating inside one train.train run."""
    with tempfile.TemporaryDirectory() as run_dir:
        output = Path(run_dir) / "blocks.json"
        extra = [
            *run_limits(epochs, batches),
            f"+callbacks.bare_steps._target_={BareStepsBetween.__module__}.BareStepsBetween",
            f"+callbacks.bare_steps.output={output}",
        ]
        train(compose_config([*overrides, *extra], run_dir), Path(run_dir))
        return json.loads(output.read_text())


class _PerSampleLab:
    """The recipe's colorization transform: one image at a time through kornia's Lab."""

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return rgb_to_lab_normalized(image[None])[0]


def _images_only(samples: list[tuple[torch.Tensor, int]]) -> torch.Tensor:
    return torch.stack([image for image, _ in samples])


class _EpochRate(L.Callback):
    def __init__(self) -> None:
        self.rates: list[float] = []

    def on_train_epoch_start(self, trainer, task) -> None:
        self._images, self._start = 0, time.perf_counter()

    def on_train_batch_end(self, trainer, task, outputs, batch, batch_idx) -> None:
        self._images += len(batch)

    def on_train_epoch_end(self, trainer, task) -> None:
        self.rates.append(self._images / (time.perf_counter() - self._start))


def recipe_rates(
    overrides: list[str], root: Path, epochs: int, batches: int, accelerator: str, workers: int
) -> list[float]:
    """(c): ImageFolder + per-sample transforms + DataLoader workers, same task, plain Trainer."""
    cfg = compose_config(overrides, "unused")
    L.seed_everything(cfg.seed, verbose=False)
    task, datamodule = build(cfg)
    steps = [transforms.ToTensor()] + ([_PerSampleLab()] if task.color_space == "lab" else [])
    dataset = ImageFolder(str(root / "train"), transform=transforms.Compose(steps))
    loader = DataLoader(
        dataset,
        batch_size=datamodule.batch_size,
        shuffle=True,
        num_workers=workers,
        collate_fn=_images_only,
        pin_memory=accelerator == "gpu",
    )
    meter = _EpochRate()
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = plain_trainer(accelerator, epochs, batches, run_dir, meter)
        trainer.fit(task, train_dataloaders=loader)
    return meter.rates


def plain_trainer(
    accelerator: str, epochs: int, batches: int, run_dir: str, callback: L.Callback
) -> L.Trainer:
    """A Trainer with every optional feature off: no logger, checkpoints, progress bar, summary
    or validation; only `callback`."""
    return L.Trainer(
        accelerator=accelerator,
        devices=1,
        max_epochs=epochs,
        limit_train_batches=batches,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=run_dir,
        callbacks=[callback],
    )


def lightning_alone_seconds(
    overrides: list[str], epochs: int, batches: int, accelerator: str
) -> dict:
    """Like within_run_seconds, with aelab's task and data in a plain_trainer: what Lightning's
    training loop costs by itself, apart from the features train.py adds."""
    cfg = compose_config(overrides, "unused")
    L.seed_everything(cfg.seed, verbose=False)
    task, datamodule = build(cfg)
    with tempfile.TemporaryDirectory() as run_dir:
        output = Path(run_dir) / "blocks.json"
        trainer = plain_trainer(accelerator, epochs, batches, run_dir, BareStepsBetween(output))
        with frozen_heap():  # as train.py trains
            trainer.fit(task, datamodule=datamodule)
        return json.loads(output.read_text())


Rates = dict[tuple[str, str], list[list[float]]]  # (task, path) -> per repeat, its counted epochs
WithinRun = dict[str, list[dict]]  # task -> per repeat, BareStepsBetween's blocks


def measure(
    root: Path,
    tasks: list[str],
    repeats: int,
    epochs: int,
    batches: int,
    accelerator: str,
    workers: int,
    extra_overrides: list[str] = (),
    within_only: bool = False,
    lightning_alone: bool = False,
) -> tuple[Rates, WithinRun]:
    """Measured images/s per (task, path) and repeat, warm-up epochs dropped, and the blocks of
    one within-run comparison per repeat (only those with within_only), and with lightning_alone
    a second one in a plain_trainer ("TASK, Lightning alone"). `extra_overrides` go into every
    path's config, so what a setting costs can be measured.

    The paths take turns, a b c then c b a (and again), so that a slow spell of a shared machine
    lands on all three instead of on whichever ran then, and a steady drift cancels over two
    repeats.
    """
    device = torch.device("cuda" if accelerator == "gpu" else "cpu")
    results: Rates = {}
    within: WithinRun = {}
    measured = {}
    for task in tasks:  # a task may carry its own overrides: "colorization loss=ce"
        name, *own = task.split()
        overrides = [
            f"task={name}",
            "data=folder",
            f"data.root={root}",
            f"trainer.accelerator={accelerator}",
            "+trainer.limit_val_batches=2",
            *extra_overrides,
            *own,
        ]
        measured[task] = (
            overrides,
            {
                "aelab": partial(aelab_rates, overrides, epochs, batches),
                "floor": partial(floor_rates, overrides, epochs, batches, device),
                "recipe": partial(
                    recipe_rates, overrides, root, epochs, batches, accelerator, workers
                ),
            },
        )
    # Repeat by repeat over the tasks, so that the variants compared see the same spells.
    for repeat in range(repeats):
        for task, (overrides, runs) in measured.items():
            order = () if within_only else PATHS if repeat % 2 == 0 else PATHS[::-1]
            for path in order:
                results.setdefault((task, path), []).append(runs[path]()[1:])
            within.setdefault(task, []).append(within_run_seconds(overrides, epochs, batches))
            if lightning_alone:
                blocks = lightning_alone_seconds(overrides, epochs, batches, accelerator)
                within.setdefault(f"{task}, Lightning alone", []).append(blocks)
    return results, within


def paired_ratios(results: Rates, task: str, other: str) -> list[float]:
    """aelab's rate over `other`'s, repeat by repeat: the two ran minutes apart at most, so the
    machine's slow and fast spells, which last longer than that, divide out."""
    return [
        statistics.median(a) / statistics.median(b)
        for a, b in zip(results[(task, "aelab")], results[(task, other)], strict=True)
    ]


def format_header(header: dict[str, str]) -> str:
    return "\n".join(f"{key}: {value}" for key, value in header.items())


def format_table(results: Rates, header: dict[str, str]) -> str:
    lines = [format_header(header)]
    lines += [
        "",
        "| task | path | images/s (median) | range | a/b | a/c |",
        "|---|---|---:|---:|---:|---:|",
    ]
    labels = {"aelab": "(a) aelab", "floor": "(b) bare loop", "recipe": "(c) usual recipe"}
    for task in dict.fromkeys(task for task, _ in results):
        ratios = ["", ""]
        for column, other in enumerate(("floor", "recipe")):
            paired = paired_ratios(results, task, other)
            ratios[column] = (
                f"{statistics.median(paired):.2f} ({min(paired):.2f}–{max(paired):.2f})"
            )
        for path in PATHS:
            rates = [rate for run in results[(task, path)] for rate in run]
            shown = ratios if path == "aelab" else ["", ""]
            lines.append(
                f"| {task} | {labels[path]} | {statistics.median(rates):,.0f} | "
                f"{min(rates):,.0f}–{max(rates):,.0f} | {shown[0]} | {shown[1]} |"
            )
    lines.append(
        "\na/b and a/c: the median (and range) over repeats of aelab's rate divided by the other "
        "path's rate in the same repeat."
    )
    return "\n".join(lines)


def format_within_run(within: WithinRun) -> str:
    """The second table: aelab and the bare loop alternating inside the same runs."""
    lines = [
        "| task | parameters | (a) ms/step | (a) images/s | (b) bare loop ms/step "
        "| (a)'s cost per step | a/b within a run |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for task, runs in within.items():
        steps = sum(len(run["aelab"]) * run["block"] for run in runs)
        aelab = sum(sum(run["aelab"]) for run in runs) / steps * 1e3
        bare = sum(sum(run["bare"]) for run in runs) / steps * 1e3
        per_run = [sum(run["bare"]) / sum(run["aelab"]) for run in runs]
        images_per_second = runs[0]["batch_size"] / aelab * 1e3
        lines.append(
            f"| {task} | {runs[0]['parameters']:,} | {aelab:.2f} | {images_per_second:,.0f} | "
            f"{bare:.2f} | {aelab - bare:.2f} ms | {bare / aelab:.3f} "
            f"({min(per_run):.3f}–{max(per_run):.3f}) |"
        )
    lines.append(
        "\nWithin a run: blocks of (a)'s steps and as many bare steps on a copy of the network take "
        "turns in the same run (BareStepsBetween), over every measured epoch of every repeat; "
        "a/b is the bare loop's total time over (a)'s (range: per run). (a) is aelab's train.py "
        "path; in a row 'Lightning alone', aelab's task and data in a Trainer with every optional "
        "feature off (no logger, checkpoints, progress bar or callbacks)."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=os.environ.get("AELAB_CIFAR10_JPG", "../shared/data/cifar10-jpg"),
        help="image folder with train/<class>/ (default: $AELAB_CIFAR10_JPG or ../shared/data/cifar10-jpg)",
    )
    parser.add_argument(
        "--task",
        action="append",
        choices=TASKS,
        dest="tasks",
        help="measure this task (give it twice for both; default: both)",
    )
    parser.add_argument(
        "--loss",
        action="append",
        dest="losses",
        choices=("bce", "mse", "ce"),
        help="measure each task with this loss (give it twice to compare, e.g. --task "
        "colorization --loss mse --loss ce: the rows become 'colorization loss=mse' and "
        "'colorization loss=ce', measured in turn)",
    )
    parser.add_argument(
        "--model",
        action="append",
        dest="models",
        choices=PRESETS,
        help="measure each task with this model preset (give several for a row each, e.g. "
        "--model seed --model resnet --model unet: rows 'reconstruction model=resnet', …)",
    )
    parser.add_argument(
        "--epochs", type=int, default=2, help="epochs per run; the first is warm-up"
    )
    parser.add_argument(
        "--repeats", type=int, default=6, help="runs per path, interleaved (even: a b c, c b a)"
    )
    parser.add_argument("--batches", type=int, default=100, help="training batches per epoch")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the recipe")
    parser.add_argument("--accelerator", choices=("auto", "cpu", "gpu"), default="auto")
    parser.add_argument(
        "--within-only",
        action="store_true",
        help="only the second table (aelab's and bare steps taking turns in the same runs): the "
        "least noisy measure of aelab's cost, in about a quarter of the time",
    )
    parser.add_argument(
        "--lightning-alone",
        action="store_true",
        help="also measure, within runs, aelab's task and data in a Trainer with every optional "
        "feature off: which part of aelab's cost per step is Lightning's own training loop",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides for every path, e.g. callbacks.step_checkpoint.every_n_train_steps"
        "=100 to see what a setting costs",
    )
    args = parser.parse_args(argv)
    if args.epochs < 2 or args.batches < 1 or args.repeats < 1:
        parser.error("--epochs needs at least 2 (the first warms up), --batches and --repeats 1")
    try:  # a mistyped override fails here, not after minutes of measuring
        compose_config(args.overrides, "unused")
    except (HydraException, OmegaConfBaseException) as error:
        parser.error(f"config overrides {' '.join(args.overrides)}: {error}")
    accelerator = args.accelerator
    if accelerator == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    tasks = args.tasks or list(TASKS)
    if args.losses:
        tasks = [f"{task} loss={loss}" for task in tasks for loss in args.losses]
    if args.models:
        tasks = [f"{task} model={model}" for task in tasks for model in args.models]
    results, within = measure(
        args.root,
        tasks,
        args.repeats,
        args.epochs,
        args.batches,
        accelerator,
        args.workers,
        args.overrides,
        args.within_only,
        args.lightning_alone,
    )
    device = torch.cuda.get_device_name() if accelerator == "gpu" else platform.processor() or "cpu"
    header = {
        "device": f"{accelerator} ({device}, {os.cpu_count()} cores)",
        "versions": f"torch {torch.__version__}, lightning {L.__version__}",
        "threads": str(torch.get_num_threads()),
        "settings": f"{args.repeats} interleaved repeats × {args.epochs - 1} measured epoch(s) of "
        f"{args.batches} batches (+1 warm-up epoch each), "
        f"recipe workers {args.workers}",
        "overrides": " ".join(args.overrides) or "none (the default config)",
    }
    first = format_table(results, header) if results else format_header(header)
    table = first + "\n\n" + format_within_run(within)
    print(table)
    return table


if __name__ == "__main__":
    main()
