"""optimized_metric: the one setting for what a run returns to a sweeper and which way Optuna
searches; an unknown metric is refused before anything runs."""

import pytest
from hydra import compose, initialize_config_dir

from aelab import CONFIG_DIR
from aelab.choices import OPTIMIZED_METRICS
from aelab.config import check_config
from aelab.errors import AelabError
from aelab.history import read_history
from aelab.runtime.train import train
from tests.conftest import compose_config, run_cli


def optuna_sweeper(metric: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        overrides = ["hparams_search=optuna", f"optimized_metric={metric}"]
        return compose("train", overrides=overrides, return_hydra_config=True).hydra.sweeper


@pytest.mark.parametrize(
    ("metric", "direction", "study"),
    [("val/psnr", "maximize", "aelab-psnr"), ("val/ssim", "maximize", "aelab-ssim"),
     ("val/loss", "minimize", "aelab-loss")],
)  # fmt: skip
@pytest.mark.slow
def test_optuna_searches_the_optimized_metric_its_way_in_a_study_of_its_own(
    metric, direction, study
):
    sweeper = optuna_sweeper(metric)
    assert (sweeper.direction, sweeper.study_name) == (direction, study)
    assert OPTIMIZED_METRICS[metric] == direction


def test_an_unknown_metric_is_refused_with_the_known_ones(tmp_path):
    cfg = compose_config(["optimized_metric=val/los"], tmp_path)
    with pytest.raises(AelabError, match=r"optimized_metric.*val/loss"):
        check_config(cfg)


@pytest.mark.slow
def test_a_search_for_an_unknown_metric_exits_2_before_any_dir(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(
        "-m", "hparams_search=optuna", "optimized_metric=val/psnrr",
        f"hydra.sweeper.storage=sqlite:///{tmp_path / 'study.db'}", f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    assert "optimized_metric" in result.stderr and "val/psnr" in result.stderr
    assert not sweep.exists() and not (tmp_path / "study.db").exists()


@pytest.mark.slow
def test_a_run_returns_its_last_value_of_the_optimized_metric(smoke_overrides, tmp_path):
    cfg = compose_config([*smoke_overrides, "logger=none", "optimized_metric=val/loss"], tmp_path)
    returned = train(cfg, tmp_path)
    last = read_history(tmp_path / "history.jsonl")[-1]
    assert returned == pytest.approx(last["val/loss"]) and last["val/loss"] != last["val/psnr"]
