"""scripts/showcase.py: reconstructions and colorizations of the same test images in one figure."""

import subprocess
import sys

import pytest
from PIL import Image

from aelab.analysis.showcase import run_test_split, showcase_rows
from tests.conftest import CLEAN_ENVIRONMENT, REPO

pytestmark = pytest.mark.slow


def run_showcase(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "showcase.py"), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        env=CLEAN_ENVIRONMENT,
    )


def test_the_rows_show_the_same_test_images(trained):
    reconstruction = trained("reconstruction") / "checkpoints" / "best.ckpt"
    colorization = trained("colorization") / "checkpoints" / "best.ckpt"
    rows = showcase_rows(reconstruction, [colorization], 4)
    assert list(rows) == [
        "test images",
        "reconstructed (loss=bce)",
        "grey (L) input",
        "colorized (loss=bce)",
    ]
    truth = run_test_split(reconstruction)[:4].float() / 255
    assert (rows["test images"] == truth).all()
    for images in rows.values():
        assert images.shape == truth.shape and images.min() >= 0 and images.max() <= 1
    grey = rows["grey (L) input"]
    assert (grey.amax(1) - grey.amin(1)).max() < 0.02  # no colour left in the input row


def test_the_script_writes_the_figure_and_keeps_an_existing_one(trained, tmp_path):
    reconstruction = trained("reconstruction") / "checkpoints" / "best.ckpt"
    colorization = trained("colorization") / "checkpoints" / "best.ckpt"
    out = tmp_path / "figures" / "showcase.png"
    args = ["--reconstruction", str(reconstruction), "--colorization", str(colorization)]
    result = run_showcase(*args, "--images", "6", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    width, height = Image.open(out).size
    assert width > height > 0  # images across, one row per kind
    before = out.read_bytes()
    again = run_showcase(*args, "--out", str(out))
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert out.read_bytes() == before
    for wrong in (tmp_path, tmp_path / "figure.jpg"):  # a directory; not a PNG
        refused = run_showcase(*args, "--out", str(wrong), "--overwrite")
        assert refused.returncode == 2 and "PNG file" in refused.stderr
    assert not (tmp_path / "figure.jpg").exists() and not tmp_path.with_suffix(".png").exists()


def test_a_checkpoint_outside_a_run_is_explained(trained, tmp_path):
    loose = tmp_path / "best.ckpt"
    loose.write_bytes((trained("reconstruction") / "checkpoints" / "best.ckpt").read_bytes())
    colorization = trained("colorization") / "checkpoints" / "best.ckpt"
    result = run_showcase(
        "--reconstruction", str(loose), "--colorization", str(colorization),
        "--out", str(tmp_path / "x.png"),
    )  # fmt: skip
    assert result.returncode == 2 and "aelab: " in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "x.png").exists()
