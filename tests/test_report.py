"""The report on a real 2×2 smoke multirun, plus a crashed, a killed and a running run beside it."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from PIL import Image

from aelab.analysis.baselines import binary_entropy_floor, to_unit
from aelab.analysis.report import main as report_main
from aelab.analysis.report import write_report
from aelab.analysis.runs import Run, describe_differences, find_runs, run_status
from aelab.data import ImageDataModule
from aelab.errors import AelabError
from aelab.runtime.train import train
from tests.conftest import compose_config
from tests.test_sweeps import REPO, run_train

LABELS = {
    "0": "loss=bce pooling=max",
    "1": "loss=bce pooling=none",
    "2": "loss=mse pooling=max",
    "3": "loss=mse pooling=none",
}


@pytest.fixture(scope="module")
def sweep(image_folder, tmp_path_factory) -> Path:
    """Jobs 0-3: a 2×2 multirun; 4: a run that failed; 5: still running; 6: died before training."""
    root = tmp_path_factory.mktemp("report")
    sweep = root / "sweep"
    smoke = [
        "debug=smoke", "data=folder", f"data.root={image_folder}", "data.subset=null",
        f"paths.cache_dir={root / 'cache'}", "trainer.accelerator=cpu",
    ]  # fmt: skip
    result = run_train(
        "-m", "loss=bce,mse", "pooling=max,none", *smoke, f"hydra.sweep.dir={sweep}", cwd=root
    )
    assert result.returncode == 0, result.stderr[-3000:]
    failing = run_train(*smoke, "trainer.precision=bogus", f"hydra.run.dir={sweep / '4'}", cwd=root)
    assert failing.returncode == 1, failing.stderr[-3000:]
    for job in ("5", "6"):
        shutil.copytree(sweep / "0" / ".hydra", sweep / job / ".hydra")
    running = {"status": "running", "pid": os.getpid(), "host": socket.gethostname()}
    (sweep / "5" / "metrics.json").write_text(json.dumps(running))
    write_report(sweep)
    return sweep


def table_rows(report: str) -> list[dict[str, str]]:
    """Every row of the report's tables as {column header: cell}."""
    rows, headers = [], None
    for line in report.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        if not line.startswith("|"):
            headers = None
        elif cells[0] == "run":
            headers = cells
        elif headers and not line.startswith("|---"):
            rows.append(dict(zip(headers, cells, strict=True)))
    return rows


@pytest.mark.slow
def test_the_table_lists_every_run_with_its_overrides_and_status(sweep):
    rows = {row["run"].strip("`"): row for row in table_rows((sweep / "report.md").read_text())}
    assert set(rows) == {"0", "1", "2", "3", "4", "5", "6", "baseline"}
    for job, label in LABELS.items():
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        row = rows[job]
        assert (row["overrides"], row["status"]) == (label, "completed")
        assert row["psnr (dB)"] == f"{metrics['test']['psnr']:.2f}"
        assert row["ssim"] == f"{metrics['test']['ssim']:.4f}"
        assert row["latent"] == f"{metrics['model']['latent_size']:,}"
        seconds = json.loads((sweep / job / "timing.json").read_text())["mean_seconds_per_epoch"]
        assert row["s/epoch"] == f"{seconds:.2f}"
        assert ("no bottleneck" in row["note"]) is label.endswith("none")
    assert (rows["4"]["overrides"], rows["4"]["status"]) == (
        "trainer.precision=bogus",
        "failed",
    )
    assert "bogus" in rows["4"]["note"]
    assert rows["5"]["status"] == "running" and f"pid {os.getpid()}" in rows["5"]["note"]
    assert rows["6"]["status"] == "crashed" and "no metrics.json" in rows["6"]["note"]


@pytest.mark.slow
def test_runs_and_baselines_are_ranked_best_first_then_the_unfinished(sweep):
    rows = table_rows((sweep / "report.md").read_text())
    ranked = [row for row in rows if row["status"] in ("completed", "baseline")]
    assert rows[: len(ranked)] == ranked and len(ranked) == 6
    psnr = [float(row["psnr (dB)"]) for row in ranked]
    assert psnr == sorted(psnr, reverse=True)
    assert {row["overrides"] for row in ranked if row["status"] == "baseline"} == {
        "avg-pool to 8×8 + bicubic",
        "PCA, k = 1,024",  # the max-pooling runs' latent; none for the 16,384-value ones
    }


@pytest.mark.slow
def test_bce_minus_floor_uses_the_runs_own_test_split(sweep, image_folder):
    data = ImageDataModule(
        source="folder", root=str(image_folder), cache_dir=str(sweep.parent / "cache")
    )
    data.setup()
    floor = binary_entropy_floor(to_unit(data.splits["test"]))
    report = (sweep / "report.md").read_text()
    assert f"{floor:.4f} here" in report
    for row in table_rows(report):
        if row["status"] in ("completed", "baseline"):
            assert float(row["bce − floor"]) == pytest.approx(float(row["bce"]) - floor, abs=2e-4)


@pytest.mark.slow
def test_every_figure_and_grid_the_report_links_is_a_png(sweep):
    report = (sweep / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert "figures/val_psnr_1_reconstruction.png" in links
    assert "figures/rate_distortion_1_reconstruction.png" in links  # the max-pooled runs' codes
    assert {f"figures/loss_{job}.png" for job in LABELS} | {
        f"{job}/preview.png" for job in LABELS
    } <= set(links)
    for link in links:
        with Image.open(sweep / link) as image:
            assert image.format == "PNG" and min(image.size) > 50
    assert "No curves: no history.jsonl" in report.split("### `4`")[1]  # it failed at its start


def test_a_network_at_several_code_sizes_is_one_line_of_the_rate_distortion_figure():
    from aelab.analysis.report import network_label

    labels = ["model=resnet model.latent_channels=3", "model=resnet model.latent_channels=16"]
    assert {network_label(label) for label in labels} == {"model=resnet"}
    assert network_label("widths=wide") == "the default network"
    assert network_label("loss=mse pooling=none") == "loss=mse pooling=none"


@pytest.mark.slow
def test_a_single_run_dir_gets_its_own_report(sweep, tmp_path):
    run_dir = shutil.copytree(sweep / "2", tmp_path / "one-run")
    text = write_report(run_dir).read_text()
    rows = [row for row in table_rows(text) if row["status"] == "completed"]
    assert [(row["run"], row["overrides"]) for row in rows] == [("`one-run`", "one-run")]
    assert "(preview.png)" in text and "loss=mse" in text


@pytest.mark.slow
def test_a_dir_without_runs_fails_clearly(tmp_path):
    with pytest.raises(AelabError, match="holds no runs"):
        write_report(tmp_path)
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "report.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "holds no runs" in result.stderr and "Traceback" not in result.stderr


def test_runs_are_found_in_job_order(tmp_path):
    for job in ("10", "2", "1"):
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / ".hydra" / "config.yaml").write_text("seed: 1\n")
    assert [run.name for run in find_runs(tmp_path)] == ["1", "2", "10"]


def test_labels_are_the_overrides_that_differ(tmp_path):
    def run(name, *overrides):
        return Run(name, tmp_path, "completed", "", None, list(overrides))

    runs = [
        run("0", "debug=smoke", "loss=bce", "seed=1"),
        run("1", "debug=smoke", "loss=mse", "seed=1"),
    ]
    runs.append(run("2", "debug=smoke", "loss=mse", "seed=1", "+model.activation=gelu"))
    common, labels = describe_differences(runs)
    assert common == ["debug=smoke", "seed=1"]
    assert labels == {"0": "loss=bce", "1": "loss=mse", "2": "loss=mse +model.activation=gelu"}
    assert describe_differences(runs[:1]) == (runs[0].overrides, {"0": "0"})


def test_status_tells_running_from_dead():
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    gone = int(finished.stdout)
    here = socket.gethostname()
    run = Path("runs/a")
    assert run_status(None, run)[0] == "crashed"
    assert run_status({"status": "completed"}, run) == ("completed", "")
    assert run_status({"status": "failed", "error": "boom"}, run) == ("failed", "boom")
    assert run_status({"status": "running", "pid": os.getpid(), "host": here}, run)[0] == "running"
    assert run_status({"status": "running", "pid": gone, "host": here}, run)[0] == "crashed"
    assert run_status({"status": "running", "pid": 1, "host": "elsewhere"}, run)[0] == "running"


@pytest.mark.slow
def test_a_colorization_run_is_tabled_against_the_grayscale_prediction(smoke_overrides, tmp_path):
    run_dir = tmp_path / "colorization"
    overrides = [*smoke_overrides, "task=colorization"]
    cfg = compose_config(overrides, run_dir)
    train(cfg, run_dir)
    (run_dir / ".hydra").mkdir()
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create(overrides), run_dir / ".hydra" / "overrides.yaml")
    test = json.loads((run_dir / "metrics.json").read_text())["test"]
    report = write_report(run_dir).read_text()
    rows = {row["status"]: row for row in table_rows(report)}
    assert set(rows) == {"completed", "baseline", "truth"}
    for status, prefix in (("completed", ""), ("baseline", "baseline/")):
        assert rows[status]["RGB psnr (dB)"] == f"{test[prefix + 'psnr']:.2f}"
        assert rows[status]["ΔE"] == f"{test[prefix + 'delta_e']:.2f}"
        assert rows[status]["chroma"] == f"{test[prefix + 'chroma']:.2f}"
        assert rows[status]["colorfulness"] == f"{test[prefix + 'colorfulness']:.2f}"
        assert rows[status]["AuC (%)"] == f"{test[prefix + 'auc']:.2f}"
        assert rows[status]["rebalanced AuC (%)"] == f"{test[prefix + 'auc_rebalanced']:.2f}"
    assert rows["baseline"]["overrides"] == "grayscale (a = b = 0)"
    assert rows["truth"]["chroma"] == f"{test['chroma_true']:.2f}"
    assert rows["truth"]["colorfulness"] == f"{test['colorfulness_true']:.2f}"
    assert rows["truth"]["RGB psnr (dB)"] == "—"
    assert f"the true colours have {test['chroma_true']:.2f}" in report
    assert "rows: the gray input, the predicted colours, the true colours" in report
    # The figure: 8 test images as rows; grey input | the run | truth as columns.
    (grid,) = re.findall(r"\]\((figures/colorized_1_colorization\.png)\)", report)
    with Image.open(run_dir / grid) as image:
        assert image.format == "PNG" and image.height > image.width  # 8 rows, 3 columns
    assert (run_dir / grid).stat().st_size < 300_000


def fake_run(run_dir: Path, metrics: str | None, config_text: str | None = None) -> Path:
    """A run dir holding a real composed config and the given metrics.json text (None: none)."""
    (run_dir / ".hydra").mkdir(parents=True)
    config = run_dir / ".hydra" / "config.yaml"
    if config_text is None:
        OmegaConf.save(compose_config(["debug=smoke"], run_dir), config)
    else:
        config.write_text(config_text)
    if metrics is not None:
        (run_dir / "metrics.json").write_text(metrics)
    return run_dir


COMPLETED = {
    "status": "completed",
    "task": "reconstruction",
    "loss": "bce",
    "test": {"psnr": 20.5, "ssim": 0.7, "bce": 0.56, "mse": 0.009},
    "model": {"latent_size": 1024, "compression": 3.0, "parameters": 1000},
    "data": {"train": 80, "val": 10, "test": 10},
}


@pytest.mark.parametrize(
    ("metrics", "reason"),
    [
        ("[1, 2]", "metrics.json holds a list, not the object aelab writes"),
        (
            json.dumps({k: v for k, v in COMPLETED.items() if k != "test"}),
            'says completed but has no "test"',
        ),
        (json.dumps({"pid": 3}), 'metrics.json has no "status"'),
        (json.dumps(COMPLETED)[:60], "metrics.json cannot be read: Unterminated string"),
        (json.dumps({**COMPLETED, "test": {"psnr": "high"}}), "test score psnr is 'high'"),
        (json.dumps({**COMPLETED, "model": {}}), '"model" has no latent_size'),
        ("\udcff", "metrics.json cannot be read"),  # not UTF-8
    ],
)
def test_a_bad_metrics_json_makes_its_run_unreadable_with_the_reason(metrics, reason, tmp_path):
    (run,) = find_runs(fake_run(tmp_path / "run", None))
    assert run.status == "crashed" and "no metrics.json" in run.detail
    path = tmp_path / "run" / "metrics.json"
    if metrics == "\udcff":
        path.write_bytes(b'{"status": "\xff"}')
    else:
        path.write_text(metrics)
    (run,) = find_runs(tmp_path / "run")
    assert (run.status, run.metrics) == ("unreadable", {})
    assert reason in run.detail and "no metrics.json" not in run.detail
    assert run.config is not None  # its config still groups it with the other runs


def test_a_good_metrics_json_still_reads_as_completed(tmp_path):
    (run,) = find_runs(fake_run(tmp_path / "run", json.dumps(COMPLETED)))
    assert (run.status, run.detail, run.metrics) == ("completed", "", COMPLETED)
    (run.path / "timing.json").write_text("[]")
    (run,) = find_runs(run.path)
    assert run.status == "completed" and run.timing == {}
    assert run.detail == "timing.json holds a list, not the object aelab writes"


@pytest.mark.parametrize(
    ("config_text", "reason"),
    [
        ("seed: [1, 2\n", ".hydra/config.yaml cannot be read: while parsing"),
        ("- 1\n- 2\n", ".hydra/config.yaml holds a list, not a run's config"),
        ("seed: 1\n", ".hydra/config.yaml has no task._target_"),
    ],
)
def test_a_bad_config_makes_its_run_unreadable_with_the_reason(config_text, reason, tmp_path):
    (run,) = find_runs(fake_run(tmp_path / "run", json.dumps(COMPLETED), config_text))
    assert (run.status, run.config) == ("unreadable", None)
    assert run.detail.startswith(reason)


@pytest.mark.slow
def test_bad_runs_beside_good_ones_are_listed_as_unreadable_and_the_rest_reported(sweep, tmp_path):
    copy = shutil.copytree(sweep, tmp_path / "sweep", ignore=shutil.ignore_patterns("report.md"))
    good = (copy / "0" / "metrics.json").read_text()
    bad = {
        "7": "[1, 2]",
        "8": json.dumps({k: v for k, v in json.loads(good).items() if k != "model"}),
        "9": good[: len(good) // 2],  # a truncated file
    }
    for job, text in bad.items():
        shutil.copytree(copy / "0" / ".hydra", copy / job / ".hydra")
        (copy / job / "metrics.json").write_text(text)
    shutil.copytree(copy / "0" / ".hydra", copy / "10" / ".hydra")
    (copy / "10" / ".hydra" / "config.yaml").write_text("task: {_target_: [")
    assert report_main([str(copy)]) == 0
    report = (copy / "report.md").read_text()
    rows = {row["run"].strip("`"): row for row in table_rows(report)}
    before = {row["run"]: row for row in table_rows((sweep / "report.md").read_text())}
    for job in LABELS:  # the good runs are reported exactly as without the bad ones
        assert rows[job]["status"] == "completed"
        assert rows[job]["psnr (dB)"] == before[f"`{job}`"]["psnr (dB)"]
    assert {rows[job]["status"] for job in bad} == {"unreadable"}
    assert "metrics.json holds a list" in rows["7"]["note"]
    assert 'metrics.json says completed but has no "model"' in rows["8"]["note"]
    assert "metrics.json cannot be read: " in rows["9"]["note"]
    assert "no metrics.json" not in rows["9"]["note"]
    assert "## Unreadable runs" in report
    assert ".hydra/config.yaml cannot be read" in rows["10"]["why"]
    assert "11 run(s): 4 completed, 1 running, 1 failed, 1 crashed, 4 unreadable." in report


def test_eval_dirs_beside_runs_are_not_taken_for_runs(tmp_path):
    run, evaluation = tmp_path / "runs" / "a", tmp_path / "evals" / "b"
    for directory in (run, evaluation):
        (directory / ".hydra").mkdir(parents=True)
        (directory / ".hydra" / "config.yaml").write_text("seed: 1\n")
    (evaluation / "eval.json").write_text("{}\n")
    assert [found.path for found in find_runs(tmp_path)] == [run]


def copied_runs(trained_run: Path, sweep: Path, roots: list[str], ids: list[str | None]) -> None:
    """Runs copied from one real run, job i with data.root = roots[i] (relative ones read from
    the run's recorded cwd) and, where ids[i] is set, a data.json with that "id"."""
    for job, (root, data_id) in enumerate(zip(roots, ids, strict=True)):
        run = sweep / str(job)
        shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("checkpoints"))
        config = OmegaConf.load(run / ".hydra" / "config.yaml")
        config.data.root = root
        OmegaConf.save(config, run / ".hydra" / "config.yaml")
        overrides = OmegaConf.load(run / ".hydra" / "overrides.yaml")
        OmegaConf.save(
            OmegaConf.create([*overrides, f"seed={job}"]), run / ".hydra" / "overrides.yaml"
        )
        if data_id is not None:
            (run / "data.json").write_text(json.dumps({"id": data_id, "root": root}))


@pytest.mark.slow
def test_runs_on_the_same_data_share_one_group_and_one_data_load(
    trained, image_folder, tmp_path, monkeypatch
):
    """However its root was spelled (absolute, through a link, relative to where the run
    started), the same data is one table and one load for the baselines, never one per run;
    a recorded data identity (data.json's "id") decides over the spelling."""
    import aelab.analysis.report as report

    source = trained("reconstruction")
    cwd = OmegaConf.load(source / ".hydra" / "hydra.yaml").hydra.runtime.cwd
    (tmp_path / "link").symlink_to(image_folder)
    spellings = [str(image_folder), str(tmp_path / "link"), os.path.relpath(image_folder, cwd)]
    roots = spellings * 8 + [str(image_folder)] * 6  # 24 runs without data.json, 6 with
    ids = [None] * 24 + ["a" * 64] * 3 + ["b" * 64] * 3
    copied_runs(source, tmp_path / "sweep", roots, ids)
    loads = []
    real_load = report.load_splits
    monkeypatch.setattr(report, "load_splits", lambda data: loads.append(data) or real_load(data))
    text = write_report(tmp_path / "sweep").read_text()
    assert len(loads) == 3  # three data identities, 30 runs
    tables = text.split("## Test metrics: reconstruction")[1:]
    assert len(tables) == 3
    runs_per_table = [len(re.findall(r"^\| `\d+`", table, re.M)) for table in tables]
    assert runs_per_table == [24, 3, 3]
    assert f"`{os.path.realpath(image_folder)}`" in tables[0]


def test_the_psnr_legend_stands_beside_the_axes_and_names_at_most_ten(tmp_path):
    from matplotlib.image import imread

    from aelab.analysis.figures import AXES_SIZE, NAMED_CURVES, plot_curves

    curves = {f"run {i}: optimizer.lr=0.00{i}": [(0, 10.0 + i), (1, 12.0 + i)] for i in range(30)}
    path = tmp_path / "psnr.png"
    plot_curves(curves, path, "val psnr", "dB")
    height, width = imread(path).shape[:2]
    assert width > AXES_SIZE[0] * 100 * 1.3  # the legend got room of its own, right of the axes
    assert NAMED_CURVES == 10
    few = tmp_path / "few.png"
    plot_curves(dict(list(curves.items())[:2]), few, "val psnr", "dB")
    assert imread(few).shape[0] == height  # the plot keeps its size whatever the legend
