"""Shared fixtures: small generated image folders and composed configs (nothing downloads)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict
from PIL import Image

from aelab import CONFIG_DIR

CLASSES = ("cats", "ships")
REPO = Path(__file__).resolve().parents[1]
# Without SLURM's variables: inside a SLURM job (CI on a cluster) a run stopped by SIGUSR1 would
# requeue that job, and a run would take itself for a requeued one.
CLEAN_ENVIRONMENT = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}


def run_cli(
    *args: str, cwd: Path = REPO, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """`python train.py ARGS` as a user runs it, output captured."""
    Path(cwd).mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env={**CLEAN_ENVIRONMENT, **(env or {})},
    )


def run_entry(entry, *args: str) -> int:
    """train.py's (or eval.py's) entry in this process, as `python train.py ARGS`: the exit code."""
    argv = sys.argv
    sys.argv = ["train.py", *args]
    try:
        with pytest.raises(SystemExit) as stop:
            entry()
    finally:
        sys.argv = argv
    return stop.value.code


def without_test_hooks(run_dir: Path) -> None:
    """The tests' own callbacks and loggers out of a run's saved config before resume=: they fire
    once, and a saved config may name only classes aelab trusts (aelab.config.trusted)."""
    path = run_dir / ".hydra" / "config.yaml"
    config = OmegaConf.load(path)
    for group in ("callbacks", "logger"):
        for name, node in list((config.get(group) or {}).items()):
            if node is not None and str(node.get("_target_", "")).startswith("tests."):
                config[group].pop(name)
    OmegaConf.save(config, path)


def write_images(
    directory: Path, count: int, size: tuple[int, int] = (32, 32), seed: int = 0
) -> None:
    """Smooth random images (so the autoencoder has structure to learn), saved as PNG."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    height, width = size
    for index in range(count):
        coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((width, height), Image.BILINEAR)
        image.save(directory / f"{index:04d}.png")


def make_image_folder(root: Path, train_per_class: int = 40, test_per_class: int = 10) -> Path:
    for seed, cls in enumerate(CLASSES):
        write_images(root / "train" / cls, train_per_class, seed=seed)
        write_images(root / "test" / cls, test_per_class, seed=seed + 100)
    return root


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """100 images: 80 in train/, 20 in test/, two classes."""
    return make_image_folder(tmp_path_factory.mktemp("images"))


def compose_config(overrides: list[str], output_dir: Path) -> DictConfig:
    """The config `python train.py OVERRIDES` would get, with the run dir set to output_dir."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


@pytest.fixture
def smoke_overrides(image_folder, tmp_path) -> list[str]:
    """Seconds-long runs on the generated folder, caching under the test's tmp dir."""
    return [
        "debug=smoke",
        "data=folder",
        f"data.root={image_folder}",
        "data.subset=null",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "trainer.accelerator=cpu",
    ]


@pytest.fixture(autouse=True)
def logging_as_before():
    """Hydra's job logging, set up by an entry point run in this process, is undone after the
    test: its handlers hold the test's captured streams, which later tests would write to."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)


@pytest.fixture(scope="session")
def trained(tmp_path_factory, image_folder):
    """One smoke run per task, trained through the CLI on first use and shared by the session."""
    runs: dict[str, Path] = {}

    def run_of(task: str) -> Path:
        if task not in runs:
            tmp = tmp_path_factory.mktemp(task)
            result = run_cli(
                *("debug=smoke", "data=folder", f"data.root={image_folder}", "data.subset=null"),
                *(f"paths.cache_dir={tmp / 'cache'}", "trainer.accelerator=cpu", f"task={task}"),
                "~local",  # the run's saved config sets no folder root, as on a machine without one
                f"hydra.run.dir={tmp / 'run'}",
            )
            assert result.returncode == 0, result.stderr[-3000:]
            runs[task] = tmp / "run"
        return runs[task]

    return run_of
