import math

import pytest
import torch

from aelab.analysis import baselines
from aelab.analysis.baselines import (
    avgpool_bicubic,
    binary_entropy_floor,
    cached_pca,
    fit_pca,
    reconstruction_baselines,
    reconstruction_scores,
)


def random_images(count: int, size: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("count", [200, 20])  # more images than pixels (48), and fewer
def test_pca_keeping_every_component_reconstructs_exactly(count):
    train = random_images(count)
    basis = fit_pca(train)
    assert torch.allclose(basis.reconstruct(train, k=48), train, atol=1e-6)


def test_pca_ranks_directions_by_variance_and_drops_the_rest():
    """Points on a line (plus a tiny wobble): one component carries it, the rest is the wobble."""
    t = torch.rand(300, 1, generator=torch.Generator().manual_seed(1))
    wobble = 1e-3 * torch.rand(300, 48, generator=torch.Generator().manual_seed(2))
    direction = torch.linspace(0.1, 0.9, 48)
    images = (0.05 + t * direction + wobble).view(300, 3, 4, 4)
    basis = fit_pca(images)
    first = basis.components[:, 0].float()
    assert abs(float(first @ direction / direction.norm())) == pytest.approx(1, abs=1e-4)
    error = (basis.reconstruct(images, k=1) - images).abs().max()
    assert 0 < error < 2e-3


def test_avgpool_bicubic_keeps_a_constant_image():
    images = torch.full((2, 3, 32, 32), 0.3)
    assert torch.allclose(avgpool_bicubic(images, 8), images, atol=1e-6)


def test_the_bce_floor_is_the_mean_binary_entropy():
    assert binary_entropy_floor(torch.tensor([0.0, 1.0, 1.0, 0.0])) == 0
    assert binary_entropy_floor(torch.full((10,), 0.5)) == pytest.approx(math.log(2))
    targets = random_images(5, size=16)  # SSIM's 11-pixel window needs room
    perfect = reconstruction_scores(targets, targets)  # predicting the target reaches the floor
    assert perfect["bce"] == pytest.approx(binary_entropy_floor(targets), abs=1e-4)
    assert (perfect["mse"], perfect["psnr"]) == (0, 100)
    assert perfect["ssim"] == pytest.approx(1, abs=1e-5)


def test_pca_fit_is_cached_by_the_train_images(tmp_path, monkeypatch):
    train = (random_images(60) * 255).to(torch.uint8)
    first = cached_pca(train, tmp_path)
    assert len(list(tmp_path.glob("pca-3x4x4-*.pt"))) == 1

    def refuse(images):
        raise AssertionError("fitted again instead of loading the cache")

    monkeypatch.setattr(baselines, "fit_pca", refuse)
    again = cached_pca(train, tmp_path)
    assert torch.equal(again.components, first.components)
    with pytest.raises(AssertionError):  # other images are another key
        cached_pca(train.flip(0)[:59], tmp_path)


def test_reconstruction_baselines_give_pca_rows_only_for_real_bottlenecks(tmp_path):
    splits = {"train": (random_images(80, 8) * 255).to(torch.uint8)}
    splits["test"] = (random_images(10, 8, seed=3) * 255).to(torch.uint8)
    rows = reconstruction_baselines(splits, [192, 48, 48, 192 * 4], tmp_path, pool_size=2)
    assert [row.name for row in rows] == ["avg-pool to 2×2 + bicubic", "PCA, k = 48"]
    assert [row.latent_size for row in rows] == [12, 48]
    assert rows[1].parameters == 48 * 192 + 192
    assert 0 < rows[0].scores["psnr"] < rows[1].scores["psnr"]
