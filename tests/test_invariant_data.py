"""A run's data identity is fixed at its start and checked at every later use; bad files and
broken caches never hang, traceback or poison later runs.

The property: every entry point that reuses a run's data (resume= and eval.py from another
working dir, the report's baselines) refuses each change to it (images added, an image changed,
the root moved) naming the change, and takes the unchanged data from any working dir, giving the
run's own numbers."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from aelab.analysis.baselines import cached_pca, recorded_splits
from aelab.analysis.report import write_report
from aelab.data import identity
from aelab.data.cache_file import MAGIC, read_cache, write_cache
from aelab.data.image_io import ImageReadError, read_rgb_uint8
from aelab.data.sources import load_image_folder
from aelab.errors import AelabError
from aelab.runtime.evaluate import run as run_eval
from aelab.runtime.run_config import load_run_config
from aelab.tasks import ab_bins
from tests.conftest import REPO, make_image_folder, run_cli, write_images
from tests.test_evaluate import eval_config


@pytest.fixture(scope="module")
def relative_run(tmp_path_factory):
    """A completed smoke run started in dir A with data.root=data (relative: A/data), at an image
    size and split seed other than the presets', and a dir B whose own data/ holds other images:
    what data.root=data means from B."""
    base = tmp_path_factory.mktemp("identity")
    here, elsewhere = base / "a", base / "b"
    make_image_folder(here / "data", train_per_class=20, test_per_class=5)
    make_image_folder(elsewhere / "data", train_per_class=30, test_per_class=6)
    run_dir = base / "run"
    result = run_cli(
        *("debug=smoke", "data=folder", "data.root=data", "data.subset=null", "~local"),
        *("data.image_size=16", "data.split_seed=3"),
        *(
            f"paths.cache_dir={base / 'cache'}",
            "trainer.accelerator=cpu",
            f"hydra.run.dir={run_dir}",
        ),
        cwd=here,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, here / "data", elsewhere


def add_image(root: Path):
    write_images(root / "train" / "cats" / "new", 1, seed=7)
    yield "1 image(s) added: train/cats/new/0000.png"
    shutil.rmtree(root / "train" / "cats" / "new")


def change_image(root: Path):
    path = root / "test" / "ships" / "0002.png"
    data, stat = path.read_bytes(), path.stat()
    write_images(root.parent / "scratch", 1, seed=9)
    shutil.move(root.parent / "scratch" / "0000.png", path)  # other pixels, other mtime
    yield "1 image(s) changed (another size or modification time): test/ships/0002.png"
    path.write_bytes(data)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def move_root(root: Path):
    root.rename(root.with_name("moved"))
    yield f"read its images from {root}, which no longer exists"
    root.with_name("moved").rename(root)


CHANGES = {"images added": add_image, "an image changed": change_image, "root moved": move_root}


def resume_from(cwd: Path, run_dir: Path) -> subprocess.CompletedProcess:
    status = json.loads((run_dir / "metrics.json").read_text())
    (run_dir / "metrics.json").write_text(json.dumps({"status": "interrupted"}))
    result = run_cli(f"resume={run_dir}", cwd=cwd)
    if status["status"] == "completed" and result.returncode != 0:  # refused: as it was
        (run_dir / "metrics.json").write_text(json.dumps(status))
    return result


def eval_from(cwd: Path, run_dir: Path, eval_dir: Path, monkeypatch, *args: str) -> dict:
    monkeypatch.chdir(cwd)
    run_eval(eval_config([f"ckpt_path={run_dir}/checkpoints/best.ckpt", *args], eval_dir))
    return json.loads((eval_dir / "eval.json").read_text())


def report_splits(run_dir: Path) -> dict[str, torch.Tensor]:
    """The splits the report's baselines are computed on, from its data settings for the run."""
    data = OmegaConf.to_container(load_run_config(run_dir).data, resolve=True)
    data["root"] = identity.root_as_started(run_dir, data["root"])
    return recorded_splits([run_dir], data)


@pytest.mark.slow
@pytest.mark.parametrize("change", CHANGES)
def test_every_entry_point_refuses_changed_data_naming_the_change(
    change, relative_run, tmp_path, monkeypatch, capsys
):
    run_dir, root, elsewhere = relative_run
    before = json.loads((run_dir / "metrics.json").read_text())
    edit = CHANGES[change](root)
    named = next(edit)
    try:
        resumed = resume_from(elsewhere, run_dir)
        assert resumed.returncode == 2 and named in resumed.stderr, resumed.stderr[-2000:]
        assert "Traceback" not in resumed.stderr
        with pytest.raises(SystemExit) as exit_:
            eval_from(elsewhere, run_dir, tmp_path / "eval", monkeypatch)
        assert exit_.value.code == 2 and named in capsys.readouterr().err
        assert not (tmp_path / "eval").exists()
        report = write_report(run_dir).read_text()  # the report is written, without baselines
        assert "Baselines skipped" in report and named in report and "| baseline |" not in report
    finally:
        next(edit, None)
    assert json.loads((run_dir / "metrics.json").read_text()) == before


@pytest.mark.slow
def test_unchanged_data_is_the_runs_from_any_working_dir(relative_run, tmp_path, monkeypatch):
    run_dir, root, elsewhere = relative_run
    test = json.loads((run_dir / "metrics.json").read_text())["test"]
    results = eval_from(elsewhere, run_dir, tmp_path / "eval", monkeypatch)
    assert results["metrics"] == test and results["data"]["root"] == str(root)
    assert results["data_matches_run"] is True and results["data_differences"] == []
    assert results["data_id"] == json.loads((run_dir / "data.json").read_text())["id"]
    assert (
        len(report_splits(run_dir)["test"])
        == json.loads((run_dir / "data.json").read_text())["split_sizes"]["test"]
    )
    resumed = resume_from(elsewhere, run_dir)  # last.ckpt is the end: it goes straight to test
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((run_dir / "metrics.json").read_text())["test"] == test


@pytest.mark.slow
def test_eval_on_other_data_by_root_alone_keeps_the_runs_settings(
    relative_run, tmp_path, monkeypatch
):
    run_dir, _, elsewhere = relative_run
    results = eval_from(elsewhere, run_dir, tmp_path / "eval", monkeypatch, "data.root=data")
    saved = json.loads((run_dir / "data.json").read_text())
    assert results["data"]["root"] == str(elsewhere / "data")
    assert results["data_matches_run"] is False
    assert results["data_differences"][0].startswith(f"the images are read from {elsewhere}")
    assert any("image(s) added" in found for found in results["data_differences"])
    kept = ("image_size", "split", "split_seed", "subset")
    assert {k: results["data"][k] for k in kept} == {k: saved[k] for k in kept}
    assert (saved["image_size"], saved["split_seed"]) == (16, 3)  # not the presets' 32 and 0
    assert results["split_size"] == round(0.1 * 72)  # the run's fractions on the 72 images there


@pytest.mark.slow
def test_data_json_holds_the_identity_and_its_parts(relative_run):
    run_dir, root, _ = relative_run
    saved = json.loads((run_dir / "data.json").read_text())
    assert saved["root"] == str(root) and saved["source"] == "folder"
    assert saved["images"] == {"train": 40, "test": 10}
    assert saved["split_sizes"] == {"val": 5, "test": 5, "train": 40}
    assert (saved["image_size"], saved["split"], saved["split_seed"]) == (16, "pooled", 3)
    assert saved["subset"] is None
    assert all(len(saved[key]) == 64 for key in ("id", "fingerprint", "split_hash"))


@pytest.mark.slow
def test_a_run_from_before_data_json_says_so(relative_run, tmp_path, monkeypatch, caplog):
    run_dir, root, elsewhere = relative_run
    old = tmp_path / "old"
    shutil.copytree(run_dir, old, ignore=shutil.ignore_patterns("data.json", "data-files*"))
    results = eval_from(elsewhere, old, tmp_path / "eval", monkeypatch)
    assert (
        results["data_matches_run"] is None and "has no data.json" in results["data_differences"][0]
    )
    assert results["data"]["root"] == str(root)  # relative: where the run was started (hydra.yaml)
    assert results["metrics"] == json.loads((run_dir / "metrics.json").read_text())["test"]
    assert len(report_splits(old)["test"]) == 5 and "have no data.json" in caplog.text
    recorded = {name: tmp_path / name for name in ("data.json", "data-files.json.gz")}
    for name, kept in recorded.items():
        (run_dir / name).rename(kept)
    try:  # the run itself without its record (a copy's checkpoints name the original's paths)
        resumed = resume_from(elsewhere, run_dir)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert "has no data.json" in resumed.stdout + resumed.stderr
        assert json.loads((run_dir / "data.json").read_text())["root"] == str(root)  # from now on
    finally:
        for name, kept in recorded.items():
            kept.replace(run_dir / name)


def test_a_fifo_named_like_an_image_is_skipped_not_opened(tmp_path, caplog):
    root = make_image_folder(tmp_path / "images", 3, 1)
    os.mkfifo(root / "train" / "cats" / "p.jpg")

    def hung(*_):
        raise AssertionError("waited on the FIFO")

    signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)  # opening the FIFO would wait forever
    try:
        loaded = load_image_folder(root, 32)
        with pytest.raises(ImageReadError, match="not a regular file"):
            read_rgb_uint8(root / "train" / "cats" / "p.jpg")
    finally:
        signal.alarm(0)
    assert len(loaded["train"]) == 6 and "p.jpg (not a regular file" in caplog.text


def test_a_dangling_image_link_is_skipped_with_a_warning(tmp_path, caplog):
    root = make_image_folder(tmp_path / "images", 3, 1)
    (root / "test" / "ships" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    loaded = load_image_folder(root, 32, tmp_path / "cache")
    assert len(loaded["test"]) == 2 and "gone.jpg (a link to nothing)" in caplog.text


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "middle":
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :])
    else:  # a file of the format before checksums
        path.write_bytes(data[: -len(MAGIC) - 32])


@pytest.mark.parametrize("how", ["truncated", "empty", "middle", "unsummed"])
def test_a_broken_folder_cache_is_named_and_rebuilt(how, image_folder, tmp_path, caplog):
    cache = tmp_path / "cache"
    first = load_image_folder(image_folder, 32, cache)
    (cached,) = cache.iterdir()
    damage(cached, how)
    again = load_image_folder(image_folder, 32, cache)
    assert all(torch.equal(first[part], again[part]) for part in first)
    assert f"The cache file {cached} is broken" in caplog.text
    caplog.clear()
    load_image_folder(image_folder, 32, cache)  # rebuilt: read without a word
    assert "broken" not in caplog.text and [p.name for p in cache.iterdir()] == [cached.name]


def lab(images: torch.Tensor) -> torch.Tensor:
    from aelab.data.color import rgb_to_lab_normalized

    return rgb_to_lab_normalized(images.float() / 255)


@pytest.mark.parametrize("how", ["truncated", "empty", "middle", "wrong shape"])
def test_a_broken_ab_prior_cache_is_named_and_rebuilt(how, tmp_path, caplog):
    images = torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8)
    prior = ab_bins.training_prior(images, lab, tmp_path)
    (cached,) = tmp_path.glob("ab-prior-*.pt")
    if how == "wrong shape":
        write_cache(torch.ones(3), cached)  # a sound file holding the wrong thing
    else:
        damage(cached, how)
    assert torch.equal(ab_bins.training_prior(images, lab, tmp_path), prior)
    assert f"The cache file {cached} is broken" in caplog.text


def test_a_broken_pca_cache_is_refitted(tmp_path, caplog):
    train = torch.randint(0, 256, (30, 3, 4, 4), dtype=torch.uint8)
    basis = cached_pca(train, tmp_path)
    (cached,) = tmp_path.glob("pca-*.pt")
    damage(cached, "middle")
    assert torch.equal(cached_pca(train, tmp_path).components, basis.components)
    assert "is broken" in caplog.text


@pytest.mark.slow
def test_a_cache_over_the_file_size_limit_costs_speed_only(image_folder, tmp_path):
    """`ulimit -f 500`: the decoded folder (300 KB) cannot be written; the run's data loads."""
    cache = tmp_path / "cache"
    script = (
        "from aelab.data.sources import load_image_folder\n"
        f"parts = load_image_folder({str(image_folder)!r}, 32, {str(cache)!r})\n"
        "print({k: len(v) for k, v in parts.items()})"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=REPO,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (500 * 512, 500 * 512)),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "{'train': 80, 'test': 20}" in result.stdout
    assert "Could not write the cache file" in result.stderr and "File too large" in result.stderr
    assert list(cache.iterdir()) == []  # no temporary file left behind


def test_an_unwritable_cache_dir_costs_speed_only(image_folder, tmp_path, caplog):
    (tmp_path / "file").write_text("not a dir")
    loaded = load_image_folder(image_folder, 32, tmp_path / "file" / "cache")
    assert len(loaded["train"]) == 80 and "Could not write the cache file" in caplog.text
    if os.geteuid() != 0:  # root writes anywhere
        (tmp_path / "ro").mkdir(mode=0o555)
        assert not write_cache(torch.zeros(3), tmp_path / "ro" / "x.pt")
        assert list((tmp_path / "ro").iterdir()) == []


def test_a_cache_write_removes_only_its_own_temporary_file(tmp_path, monkeypatch):
    other = tmp_path / ".x.pt.someone-elses.tmp"
    other.write_text("another writer's")

    def refuse(*_):
        raise OSError("no rename")

    monkeypatch.setattr(Path, "replace", refuse)
    assert not write_cache(torch.zeros(3), tmp_path / "x.pt")
    assert [p.name for p in tmp_path.iterdir()] == [other.name]
    assert read_cache(tmp_path / "x.pt") is None


def folder_data(root, **settings):
    from aelab.data import ImageDataModule

    datamodule = ImageDataModule(source="folder", root=str(root), **settings)
    datamodule.setup()
    return identity.describe(datamodule)


def test_the_id_is_the_data_however_the_root_is_spelled(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path / "images", 5, 2)
    monkeypatch.chdir(tmp_path)
    same = folder_data("images"), folder_data(root), folder_data(f"{tmp_path}/./images/../images")
    assert len({described["id"] for described in same}) == 1
    assert {described["root"] for described in same} == {str(root)}
    others = [
        folder_data(root, image_size=16),
        folder_data(root, split_seed=1),
        folder_data(root, subset=8),
        folder_data(root, split="official"),
        folder_data(root, val_fraction=0.2),  # the same settings the id names, another split
    ]
    assert len({described["id"] for described in [same[0], *others]}) == 6


def test_an_unreadable_data_json_is_named(tmp_path):
    (tmp_path / "data.json").write_text('{"id": "abc", "ro')
    with pytest.raises(AelabError, match=r"data\.json cannot be read"):
        identity.recorded(tmp_path)
    (tmp_path / "data.json").write_text("[1, 2]")
    with pytest.raises(AelabError, match="not a data identity written by aelab"):
        identity.recorded(tmp_path)
