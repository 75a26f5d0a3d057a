"""One epoch on 2,000 real CIFAR-10 images from the shared copy, through the user's code path."""

import csv
import os
from pathlib import Path

import pytest

from aelab.runtime.train import train
from tests.conftest import compose_config

pytestmark = pytest.mark.slow

CIFAR10_JPG = os.environ.get("AELAB_CIFAR10_JPG")


@pytest.mark.skipif(
    CIFAR10_JPG is None,
    reason="set AELAB_CIFAR10_JPG to the CIFAR-10 image folder; .ci/run does, so CI always runs it",
)
def test_one_epoch_on_real_cifar10_raises_val_psnr(tmp_path):
    root = Path(CIFAR10_JPG)
    assert (root / "train").is_dir() and (root / "test").is_dir(), f"{root} is set but missing"
    cache = os.environ.get("AELAB_CACHE_DIR", str(tmp_path / "cache"))
    cfg = compose_config(
        [
            "data=folder",
            f"data.root={root}",
            "data.subset=2000",
            "data.batch_size=32",
            f"paths.cache_dir={cache}",
            "trainer.accelerator=cpu",
            "trainer.max_epochs=1",
            "trainer.val_check_interval=0.25",
            "logger=csv",
            "trainer.enable_progress_bar=false",
            "callbacks.progress_bar=null",
        ],
        tmp_path,
    )
    train(cfg, tmp_path)
    with open(tmp_path / "csv" / "metrics.csv") as handle:
        psnr = [float(row["val/psnr"]) for row in csv.DictReader(handle) if row.get("val/psnr")]
    assert len(psnr) == 4, psnr
    assert psnr[-1] > psnr[0] + 0.5, psnr
    assert 12 < psnr[-1] < 40
