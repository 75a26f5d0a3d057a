"""scripts/against_grey.py: the per-image psnr of a colorization against grey, binned by grey's."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from aelab.analysis.against_grey import breakdown, per_image_psnr
from aelab.analysis.predict import Colorizer
from tests.conftest import CLEAN_ENVIRONMENT, REPO


class ConstantAB(nn.Module):
    """Predicts the same normalised a, b everywhere: 0.5 is grey."""

    def __init__(self, ab: float) -> None:
        super().__init__()
        self.logit = torch.logit(torch.tensor(ab))

    def forward(self, lightness: torch.Tensor) -> torch.Tensor:
        return self.logit.expand(len(lightness), 2, *lightness.shape[-2:])


def photos() -> torch.Tensor:
    """Eight coloured uint8 images and two exactly grey ones."""
    coloured = torch.randint(0, 256, (8, 3, 16, 16), generator=torch.Generator().manual_seed(0))
    grey = torch.randint(0, 256, (2, 1, 16, 16), generator=torch.Generator().manual_seed(1))
    return torch.cat([coloured, grey.expand(2, 3, 16, 16)]).to(torch.uint8)


def test_grey_itself_scores_as_grey_and_grey_photos_hit_the_cap():
    scores = per_image_psnr(Colorizer(ConstantAB(0.5)), photos(), batch=3)
    assert torch.allclose(scores["model"], scores["grey"])
    assert (scores["grey"][-2:] > 60).all() and (scores["grey"][:8] < 40).all()


def test_the_bins_add_up_to_the_mean_gain():
    scores = per_image_psnr(Colorizer(ConstantAB(0.6)), photos())
    table = breakdown(scores)
    shares = [float(line.split("|")[-2]) for line in table.splitlines()[2:] if line.startswith("|")]
    gain = (scores["model"] - scores["grey"]).mean()
    assert sum(shares) == pytest.approx(float(gain), abs=0.005)
    assert "| 60 or more (a grey photo) | 2 | 0% |" in table
    assert f"({gain:+.3f}); without the 2 grey photos" in table


@pytest.mark.slow
def test_the_script_breaks_down_a_trained_run(trained):
    checkpoint = trained("colorization") / "checkpoints" / "best.ckpt"
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "against_grey.py"), str(checkpoint)],
        capture_output=True, text=True, cwd=REPO, timeout=300, env=CLEAN_ENVIRONMENT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("| grey's psnr (dB) | images |")
    assert "Mean per-image psnr: model" in result.stdout
    missing = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "against_grey.py"), str(checkpoint) + ".gone"],
        capture_output=True, text=True, cwd=REPO, timeout=300, env=CLEAN_ENVIRONMENT,
    )  # fmt: skip
    assert missing.returncode == 2 and "aelab:" in missing.stderr
