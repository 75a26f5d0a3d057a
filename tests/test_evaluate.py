"""eval.py: a finished run's checkpoint tested again, on its own data or on other data."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from aelab import CONFIG_DIR
from aelab.runtime import created
from aelab.runtime.evaluate import run
from aelab.runtime.run_config import load_run_config
from aelab.runtime.train import build
from tests.conftest import CLEAN_ENVIRONMENT, REPO, make_image_folder


def run_eval(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python eval.py ARGS` as a user runs it, output captured."""
    return subprocess.run(
        [sys.executable, str(REPO / "eval.py"), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
        env=CLEAN_ENVIRONMENT,
    )


def snapshot(directory: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under directory with its mtime and bytes."""
    return {
        str(path.relative_to(directory)): (path.stat().st_mtime_ns, path.read_bytes())
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def evaluated(run_dir: Path, eval_dir: Path, *args: str) -> dict:
    """eval.json of `python eval.py ckpt_path=RUN/checkpoints/best.ckpt ARGS`, RUN left as it was."""
    before = snapshot(run_dir)
    checkpoint = run_dir / "checkpoints" / "best.ckpt"
    result = run_eval(f"ckpt_path={checkpoint}", f"hydra.run.dir={eval_dir}", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert snapshot(run_dir) == before
    assert (eval_dir / "eval.log").is_file()
    return json.loads((eval_dir / "eval.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("task", ["reconstruction", "colorization"])
def test_eval_repeats_the_runs_test_metrics_exactly(task, trained, tmp_path):
    run_dir = trained(task)
    results = evaluated(run_dir, tmp_path / "eval")
    run_results = json.loads((run_dir / "metrics.json").read_text())
    assert results["metrics"] == run_results["test"]  # every key, exact floats
    assert results["task"] == run_results["task"] == task
    assert results["split"] == "test" and results["split_size"] == run_results["data"]["test"]
    assert results["checkpoint"] == str(run_dir / "checkpoints" / "best.ckpt")
    assert results["run_dir"] == str(run_dir)
    run_data = OmegaConf.to_container(load_run_config(run_dir).data, resolve=True)
    assert results["data"] == run_data


@pytest.mark.slow
def test_eval_on_another_folder(trained, tmp_path):
    run_dir = trained("reconstruction")
    other = make_image_folder(tmp_path / "other", train_per_class=10, test_per_class=4)
    results = evaluated(run_dir, tmp_path / "eval", f"data.root={other}", "trainer.accelerator=cpu")
    assert results["data"]["root"] == str(other) and results["split_size"] == 3
    assert results["data_matches_run"] is False
    first, files = results["data_differences"][:2]
    assert first.startswith(f"the images are read from {other}") and "72 image(s) removed" in files
    test = json.loads((run_dir / "metrics.json").read_text())["test"]
    assert results["metrics"].keys() == test.keys()
    assert all(results["metrics"][key] != test[key] for key in ("mse", "psnr", "ssim"))


@pytest.mark.slow
def test_eval_of_the_validation_split_repeats_the_best_checkpoints_score(trained, tmp_path):
    run_dir = trained("reconstruction")
    results = evaluated(run_dir, tmp_path / "eval", "split=val")
    assert results["split"] == "val" and results["split_size"] == 10
    checkpoint = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)
    best = next(
        s["best_model_score"] for k, s in checkpoint["callbacks"].items() if "val/loss" in k
    )
    assert results["metrics"]["loss"] == best.item()  # the val/loss best.ckpt was chosen by


@pytest.mark.slow
def test_the_run_config_resolves_outside_hydra(trained, tmp_path):
    cfg = load_run_config(trained("reconstruction"), tmp_path)
    assert OmegaConf.to_container(cfg, resolve=True)["paths"]["output_dir"] == str(tmp_path)
    task, _ = build(cfg)
    assert task.name == "reconstruction"


def eval_config(overrides: list[str], output_dir: Path):
    """The config `python eval.py OVERRIDES` would get, with the eval dir set to output_dir."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("eval", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


@pytest.mark.slow
@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["ckpt_path=TMP/missing.ckpt"], "does not exist"),
        (["ckpt_path=TMP/junk.ckpt"], "could not be loaded as a checkpoint"),
        (["ckpt_path=TMP/loose/best.ckpt"], "is not inside a run dir"),
        (["ckpt_path=CKPT", "+data=folder"], "data.root=PATH"),
        (["ckpt_path=CKPT", "temperature=1"], "only a loss=ce colorization run"),
        ([], "needs the checkpoint"),
    ],
)
def test_bad_inputs_are_explained_and_leave_no_eval_dir(
    arguments, message, trained, tmp_path, capsys
):
    checkpoint = trained("reconstruction") / "checkpoints" / "best.ckpt"
    (tmp_path / "junk.ckpt").write_text("not a checkpoint")
    (tmp_path / "loose").mkdir()
    shutil.copy(checkpoint, tmp_path / "loose")
    overrides = [
        a.replace("CKPT", str(checkpoint)).replace("TMP", str(tmp_path)) for a in arguments
    ]
    eval_dir = tmp_path / "eval"
    created.make_dir(eval_dir)  # as the claim makes it; then what Hydra writes before the job
    created.expect(eval_dir / ".hydra", "tree")
    created.expect(eval_dir / "eval.log")
    (eval_dir / ".hydra").mkdir()
    (eval_dir / "eval.log").touch()
    with pytest.raises(SystemExit) as exit_:
        run(eval_config(overrides, eval_dir))
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert error.strip().startswith("aelab: ") and message in error
    assert not eval_dir.exists()


@pytest.mark.slow
def test_a_missing_checkpoint_from_the_command_line(tmp_path):
    result = run_eval(f"ckpt_path={tmp_path / 'none.ckpt'}", f"hydra.run.dir={tmp_path / 'eval'}")
    assert result.returncode == 2
    assert "aelab: " in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "eval").exists()


@pytest.mark.slow
def test_eval_never_writes_into_the_run_dir(trained):
    run_dir = trained("reconstruction")
    before = snapshot(run_dir)
    result = run_eval(f"ckpt_path={run_dir}/checkpoints/best.ckpt", f"hydra.run.dir={run_dir}")
    assert result.returncode == 2 and "already holds a run" in result.stderr
    assert snapshot(run_dir) == before


@pytest.mark.slow
def test_eval_help_says_what_it_does_without_loading_torch():
    result = run_eval("--help", timeout=60)
    assert result.returncode == 0 and "ckpt_path=RUN/checkpoints/best.ckpt" in result.stdout
    script = (
        "import runpy, sys; sys.argv = ['eval.py', '--help']\n"
        "try: runpy.run_path('eval.py', run_name='__main__')\n"
        "except SystemExit: pass\n"
        "print('torch' in sys.modules, file=sys.stderr)"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO
    )
    assert loaded.stderr.strip().endswith("False")


def test_load_run_config_drops_the_retired_no_op_profiler(tmp_path):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text(
        "paths: {output_dir: '${hydra:runtime.output_dir}'}\n"
        "trainer: {max_epochs: 1, profiler: {_target_: aelab.profiler.NoProfiler}}\n"
    )
    cfg = load_run_config(tmp_path)
    assert "profiler" not in cfg.trainer and cfg.trainer.max_epochs == 1
    assert cfg.paths.output_dir == str(tmp_path)
