"""A newcomer's first day: a data root one level off is refused with the root that works, the
report and the start line say what is true, and README's run-dir table lists what a run writes."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from aelab.analysis.report import write_report
from aelab.analysis.runs import find_runs, run_status
from aelab.data import sources
from aelab.data.folder_layout import check_folder_root
from aelab.data.sources import load_image_folder
from aelab.errors import AelabError
from aelab.runtime.lifecycle import report_interruption
from aelab.runtime.stops import TrainingInterrupted
from aelab.runtime.train import train
from tests.conftest import REPO, compose_config, make_image_folder, run_cli, write_images


def refusal(root: Path) -> str:
    with pytest.raises(AelabError) as refused:
        check_folder_root(root)
    return str(refused.value)


# A data root one level off --------------------------------------------------------------------


def test_a_root_above_a_split_layout_is_refused_naming_the_layout_root(tmp_path):
    make_image_folder(tmp_path / "data" / "cifar10-jpg", 2, 1)
    message = refusal(tmp_path / "data")
    assert "is above an image folder: it holds cifar10-jpg/," in message
    assert f"data.root={tmp_path / 'data' / 'cifar10-jpg'}." in message
    assert "test images pooled" in message


def test_a_root_two_levels_above_names_the_layout_root_not_the_level_between(tmp_path):
    root = make_image_folder(tmp_path / "shared" / "data" / "cifar10-jpg", 1, 1)
    for other in ("hooks", "seed"):  # beside it, directories of other files
        (tmp_path / "shared" / other).mkdir()
        (tmp_path / "shared" / other / "README.md").write_text("not an image")
    message = refusal(tmp_path / "shared")
    assert "it holds data/cifar10-jpg/, which it would read as a single class" in message
    assert message.endswith(f"data.root={root}.")


def test_a_root_whose_only_directory_links_back_to_it_is_left_to_the_listing(tmp_path):
    (tmp_path / "loop").symlink_to(tmp_path)
    check_folder_root(tmp_path)  # returns: the listing names what is wrong with such a root
    with pytest.raises(AelabError, match="no image files"):
        load_image_folder(tmp_path, 8)


def test_a_root_above_several_layouts_names_each(tmp_path):
    for name in ("a-jpg", "b-jpg"):
        make_image_folder(tmp_path / "data" / name, 1, 1)
    message = refusal(tmp_path / "data")
    a, b = tmp_path / "data" / "a-jpg", tmp_path / "data" / "b-jpg"
    assert message.endswith(f"point data.root at the image folder: data.root={a} or data.root={b}.")


def test_a_root_above_a_pooled_folder_with_one_class_is_refused(tmp_path):
    for name in ("cats", "ships"):
        write_images(tmp_path / "data" / "mine" / "jpg" / name, 2)
    for root in (tmp_path / "data", tmp_path / "data" / "mine"):
        message = refusal(root)
        assert message.endswith(f"data.root={tmp_path / 'data' / 'mine' / 'jpg'}.")
        assert "pooled with" not in message  # no split to lose: only the level is wrong
    write_images(tmp_path / "one" / "mine" / "cats", 1)  # one class in one folder: its root
    assert refusal(tmp_path / "one").endswith(f"data.root={tmp_path / 'one' / 'mine'}.")


def test_a_root_inside_a_split_layout_is_refused_naming_its_root(tmp_path):
    root = make_image_folder(tmp_path / "cifar10-jpg", 2, 1)
    for part in ("train", "test"):
        message = refusal(root / part)
        assert f"is the {part}/ of a split layout" in message
        assert message.endswith(f"data.root={root}.")
    message = refusal(root / "test" / "cats")  # one class dir: its images, no class dirs
    assert "one class directory" in message and f"data.root={root}," in message


@pytest.mark.parametrize(
    "layout",
    [
        ["train/cats/0.png", "test/cats/0.png"],  # a split layout
        ["cats/0.png", "ships/0.png"],  # a pooled one
        ["photos/0.png"],  # your own photos, one folder
        ["photos/0.png", "photos/trip/0.png"],  # ... with a subfolder too
        ["alice/v1/0.png", "bob/v1/0.png"],  # classes of nested folders (frames per video)
        ["chairs/train/0.png", "chairs/test/0.png"],  # per-class splits of images, not of classes
        ["data/cats/0.png", "data/ships/0.png", "extra/0.png"],  # a class beside a nested one
    ],
)
def test_image_folders_of_every_layout_are_accepted(tmp_path, layout):
    for relative in layout:
        write_images((tmp_path / relative).parent, 1)
    check_folder_root(tmp_path)
    loaded = load_image_folder(tmp_path, 8)
    assert sum(len(images) for images in loaded.values()) == len(layout)


def test_the_refusal_comes_before_any_decoding_or_cache(tmp_path, monkeypatch):
    make_image_folder(tmp_path / "data" / "cifar10-jpg", 2, 1)

    def decoded(*args):
        raise AssertionError("decoded an image")

    monkeypatch.setattr(sources, "_decode_all", decoded)
    with pytest.raises(AelabError, match="is above an image folder"):
        load_image_folder(tmp_path / "data", 32, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_train_py_refuses_the_root_above_with_the_one_that_works(tmp_path):
    make_image_folder(tmp_path / "shared" / "data" / "cifar10-jpg", 2, 1)
    run_dir, cache = tmp_path / "repo" / "run", tmp_path / "cache"
    result = run_cli(
        *("debug=smoke", "data=folder", "data.root=../shared/data", "trainer.accelerator=cpu"),
        *(f"paths.cache_dir={cache}", f"hydra.run.dir={run_dir}"),
        cwd=tmp_path / "repo",
    )
    assert result.returncode == 2, result.stderr[-3000:]
    expected = tmp_path / "shared" / "data" / "cifar10-jpg"
    assert f"point data.root at the image folder: data.root={expected}." in result.stderr
    assert "Traceback" not in result.stderr
    assert not run_dir.exists() and not cache.exists()


# The report's status words -------------------------------------------------------------------


@pytest.mark.slow
def test_the_report_calls_an_interrupted_run_interrupted_and_says_how_to_resume(trained, tmp_path):
    run = tmp_path / "stopped"
    shutil.copytree(trained("reconstruction"), run)
    last = run / "checkpoints" / "last.ckpt"
    report_interruption(run, TrainingInterrupted(signal.SIGTERM, last), resumable=True)
    report = write_report(run).read_text()
    assert "1 run(s): 1 interrupted." in report
    row = next(line for line in report.splitlines() if line.startswith("| `stopped`"))
    assert "| interrupted |" in row
    assert f"resume with `python train.py resume={run}`" in row
    assert f"**interrupted**: resume with `python train.py resume={run}`" in report
    assert "crashed" not in report


def test_statuses_are_the_recorded_ones_and_crashed_only_without_one(tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], text=True,
                          capture_output=True)  # fmt: skip
    running = {"status": "running", "pid": int(gone.stdout), "host": socket.gethostname()}
    assert run_status(running, tmp_path) == (
        "crashed",
        f"stopped while training: process {running['pid']} is gone (killed?)",
    )
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert run_status(running, tmp_path)[1].endswith(
        f"; resume with `python train.py resume={tmp_path}`"
    )
    assert run_status({"status": "diverged", "error": "loss is nan"}, tmp_path) == (
        "diverged",
        "loss is nan",
    )
    unkept = {"status": "interrupted", "error": "SIGINT received"}  # stopped before any state
    assert run_status(unkept, tmp_path) == (
        "interrupted",
        "nothing was kept: run the same command again",
    )
    assert run_status(None, tmp_path)[0] == "crashed"


# The start line of loss=ce -------------------------------------------------------------------


@pytest.mark.slow
def test_the_ce_start_line_names_the_ab_target_and_the_bin_logits(
    smoke_overrides, tmp_path, caplog
):
    overrides = [*smoke_overrides, "task=colorization", "loss=ce", "trainer.max_epochs=1"]
    with caplog.at_level(logging.INFO, logger="aelab"):
        train(compose_config(overrides, tmp_path / "run"), tmp_path / "run")
    (line,) = [record.getMessage() for record in caplog.records if "Model:" in record.message]
    assert "2×32×32 = 2,048-value ab target (predicted as 229 bin logits at 8×8, 1/4 of the" in line
    assert "234,496" not in line and "229×32×32" not in line
    summary = json.loads((tmp_path / "run" / "metrics.json").read_text())["model"]["summary"]
    assert summary in line


def test_without_upsamplings_the_ce_logits_are_at_the_images_size():
    from aelab.models import ConvAutoEncoder
    from aelab.tasks.colorization import ColorizationTask

    channels = ColorizationTask.output_channels("ce")
    network = ConvAutoEncoder(in_channels=1, out_channels=channels, pooling="none")
    task = ColorizationTask(network, loss="ce")
    assert task.target_phrase(32).endswith(
        "(predicted as 229 bin logits at 32×32, the image's size)"
    )
    assert (
        ColorizationTask(ConvAutoEncoder(in_channels=1, out_channels=2), loss="mse").target_phrase(
            32
        )
        is None
    )


# README's run-dir table -----------------------------------------------------------------------


def run_dir_table() -> set[str]:
    """The paths README's "What a run writes" table names (a trailing / names a directory)."""
    section = (REPO / "README.md").read_text().split("## What a run writes")[1].split("\n## ")[0]
    rows = [line.split(" | ")[0] for line in section.splitlines() if line.startswith("| `")]
    return {name for row in rows for name in re.findall(r"`([^`]+)`", row)}


@pytest.mark.slow
def test_the_run_dir_table_lists_exactly_what_a_finished_run_holds(trained):
    run = trained("reconstruction")
    named = run_dir_table()
    files = {str(path.relative_to(run)) for path in run.rglob("*") if path.is_file()}
    covered = {
        f for f in files if f in named or any(f.startswith(d) for d in named if d[-1] == "/")
    }
    assert covered == files, f"not in README's table: {sorted(files - covered)}"
    assert {name for name in named if name[-1] != "/"} <= files
    assert {name for name in named if name[-1] == "/"} <= {f"{d}/" for d in os.listdir(run)}
    assert len(find_runs(run)) == 1
