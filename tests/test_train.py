import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from aelab import CONFIG_DIR
from aelab.models.network import network_spec
from aelab.runtime.train import build, build_trainer, train
from tests.conftest import compose_config, run_cli

REPO = Path(__file__).resolve().parents[1]


def group_options() -> list[tuple[str, str]]:
    return [
        (group.name, option.stem)
        for group in sorted(CONFIG_DIR.iterdir())
        if group.is_dir() and group.name != "hydra"
        for option in sorted(group.glob("*.yaml"))
    ]


@pytest.mark.parametrize(("group", "option"), group_options())
def test_every_group_option_composes_and_builds(group, option, image_folder, tmp_path):
    overrides = [f"{group}={option}", "data.download=false"]
    if group != "data" or option == "folder":
        overrides += ["data=folder", f"data.root={image_folder}"]
    if (group, option) == ("loss", "ce"):
        overrides.append("task=colorization")  # classification over ab bins: colorization's loss
    if (group, option) == ("model", "custom"):
        overrides.append("model._target_=tests.plugins.tiny_net.TinyNet")  # yours, named
    cfg = compose_config(overrides, tmp_path)
    task, datamodule = build(cfg)
    spec = network_spec(task.model)
    assert all(spec[key] == value for key, value in OmegaConf.to_container(cfg.model).items())
    assert datamodule.color_space == task.color_space


@pytest.mark.parametrize("shown", [True, False])
def test_enable_progress_bar_false_alone_turns_the_progress_bar_off(shown, tmp_path):
    cfg = compose_config([f"trainer.enable_progress_bar={str(shown).lower()}"], tmp_path)
    trainer, _ = build_trainer(cfg)
    assert (trainer.progress_bar_callback is not None) is shown


@pytest.mark.slow
def test_timing_covers_every_epoch_when_the_best_checkpoint_is_an_early_one(
    smoke_overrides, tmp_path
):
    run_dir = tmp_path / "run"
    # mode=max keeps the epoch with the highest val loss as "best": the first, of three
    overrides = [*smoke_overrides, "trainer.max_epochs=3", "callbacks.checkpoint.mode=max"]
    train(compose_config(overrides, run_dir), run_dir)
    best = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=False)
    assert best["epoch"] < 2  # the test restored an earlier epoch's checkpoint
    timing = json.loads((run_dir / "timing.json").read_text())
    assert len(timing["seconds_per_epoch"]) == len(timing["images_per_second"]) == 3


@pytest.mark.slow
@pytest.mark.parametrize("pooling", ["max", "avg", "none"])
@pytest.mark.parametrize("loss", ["bce", "mse"])
def test_smoke_training_writes_a_complete_run(loss, pooling, smoke_overrides, tmp_path):
    run_dir = tmp_path / "run"
    cfg = compose_config([*smoke_overrides, f"loss={loss}", f"pooling={pooling}"], run_dir)
    val_psnr = train(cfg, run_dir)
    results = json.loads((run_dir / "metrics.json").read_text())
    assert results["status"] == "completed" and results["loss"] == loss
    assert set(results["test"]) >= {"bce", "mse", "psnr", "ssim", "loss"}
    assert results["test"]["psnr"] > 5 and 0 < results["test"]["mse"] < 0.2
    assert results["data"] == {"val": 10, "test": 10, "train": 80}
    assert results["model"]["has_bottleneck"] is (pooling != "none")
    assert val_psnr is not None and val_psnr > 5
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "preview.png").is_file()
    assert list((run_dir / "tensorboard").glob("*/events.out.tfevents.*"))  # <run name>/
    timing = json.loads((run_dir / "timing.json").read_text())
    assert len(timing["seconds_per_epoch"]) == 2 and all(s > 0 for s in timing["seconds_per_epoch"])


@pytest.mark.slow
def test_same_seed_and_config_give_the_same_metrics(smoke_overrides, tmp_path):
    written = []
    for name in ("a", "b"):
        cfg = compose_config([*smoke_overrides, "logger=none", "seed=7"], tmp_path / name)
        train(cfg, tmp_path / name)
        written.append((tmp_path / name / "metrics.json").read_text().replace(f"/{name}/", "/"))
    assert written[0] == written[1]


def test_the_bottleneck_is_stated_plainly():
    from aelab.models import ConvAutoEncoder
    from aelab.models.autoencoder import bottleneck

    facts = bottleneck(ConvAutoEncoder(), 32)
    assert (facts["latent_size"], facts["input_size"], facts["compression"]) == (1024, 3072, 3.0)
    none = bottleneck(ConvAutoEncoder(pooling="none"), 32)
    assert none["latent_size"] == 16384 and not none["has_bottleneck"]
    assert "NO bottleneck" in none["summary"]


def test_cli_help_lists_the_groups():
    result = run_cli("--help")
    assert result.returncode == 0
    for group in (
        "task:",
        "loss: bce, ce, mse",
        "pooling: avg, max, none",
        "widths:",
        "data: cifar10, folder",
    ):
        assert group in result.stdout


def test_cli_unknown_option_lists_the_choices(tmp_path):
    result = run_cli("loss=foo", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode != 0
    assert "loss/foo" in result.stderr and "bce" in result.stderr and "mse" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data=folder", "~local"], "data.root"),  # ~local: a machine-local config sets a root
        (["model.kernel_size=4"], "kernel_size"),
        (["model.widths=[]"], "model.widths"),
        (["optimizer.lr=0"], "optimizer.lr"),
        (["+optimizer.fused=true"], "~optimizer.foreach"),
        (["optimizer=sgd", "+optimizer.betas=[0.9,0.99]"], "~optimizer.betas"),
        (["ckpt_path=/nonexistent/best.ckpt"], "does not exist"),
        (["init_weights=/nonexistent/best.ckpt"], "does not exist"),
        (["data.batch_size=0"], "batch_size"),
        (["data.val_fraction=0.5", "data.test_fraction=0.6"], "fraction"),
        (["widths=deep", "data.image_size=36", "data=folder", "data.root=."], "multiple of 8"),
        (["data=folder", "data.root=/nonexistent/images"], "does not exist"),
    ],
)
def test_cli_bad_input_fails_clearly_before_writing_a_run_dir(overrides, message, tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(*overrides, "data.download=false", f"hydra.run.dir={run_dir}")
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not run_dir.exists()


@pytest.mark.slow
def test_cli_trains_end_to_end(image_folder, tmp_path):
    run_dir = tmp_path / "cli-run"
    result = run_cli(
        "debug=smoke", "data=folder", f"data.root={image_folder}", "data.subset=null",
        f"paths.cache_dir={tmp_path / 'cache'}", "loss=mse", "pooling=none", f"hydra.run.dir={run_dir}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run_dir / "metrics.json").read_text())["loss"] == "mse"
    assert (run_dir / ".hydra" / "config.yaml").is_file()


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["bce", "mse"])
def test_colorization_smoke_training_reports_model_and_grayscale_baseline(
    loss, smoke_overrides, tmp_path
):
    cfg = compose_config([*smoke_overrides, "task=colorization", f"loss={loss}"], tmp_path)
    train(cfg, tmp_path)
    results = json.loads((tmp_path / "metrics.json").read_text())
    test = results["test"]
    assert results["task"] == "colorization" and results["model"]["in_channels"] == 1
    for name in ("ab_mse", "psnr", "ssim", "delta_e", "chroma", "chroma_true"):
        assert name in test and f"baseline/{name}" in test
    assert test["baseline/chroma"] < 1e-3 < test["baseline/chroma_true"]
    assert test["chroma_true"] == pytest.approx(test["baseline/chroma_true"])
    assert 5 < test["psnr"] < 60 and test["delta_e"] > 0


@pytest.mark.slow
def test_two_runs_started_together_get_their_own_dirs(image_folder, tmp_path):
    """Default run dirs carry microseconds, so same-second starts cannot share (and clobber) a dir."""
    args = ["debug=smoke", "data=folder", f"data.root={image_folder}", "data.subset=null",
            f"paths.cache_dir={tmp_path / 'cache'}", "logger=none", "trainer.max_epochs=1"]  # fmt: skip
    command = [sys.executable, str(REPO / "train.py"), *args]
    processes = [
        subprocess.Popen(
            command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    for process in processes:
        assert process.wait(timeout=300) == 0, process.stderr.read()[-2000:]
    run_dirs = sorted((tmp_path / "outputs" / "runs").iterdir())
    assert len(run_dirs) == 2
    assert all((d / "metrics.json").is_file() for d in run_dirs)
