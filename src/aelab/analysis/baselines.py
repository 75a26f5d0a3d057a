"""Reference points a reconstruction run must beat, computed on the run's own data split (the
images its data.json records, refused when they changed: recorded_splits).

- avg-pool + bicubic: shrink each image to 8×8 by averaging, blow it back up bicubically. A
  "latent" of 3×8×8 = 192 values with no learning at all.
- PCA: the best *linear* autoencoder with a k-value code (k = a run's latent size), fitted on the
  train split. The fit (mean and eigenbasis of the pixel covariance) is cached, keyed by the train
  images' bytes, so one fit serves every k.
- the BCE floor: BCE against continuous pixel values cannot reach 0; its minimum, reached by
  predicting the target exactly, is the mean binary entropy of the target pixels.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from aelab.data import ImageDataModule, identity
from aelab.data.cache_file import read_cache, write_cache
from aelab.tasks import metrics

log = logging.getLogger(__name__)

EVAL_BATCH = 500
GRAM_CHUNK = 4096
PCA_FORMAT = 2  # 2: checksummed (aelab.data.cache_file)
DATA_SETTINGS = ("source", "root", "image_size", "split", "val_fraction", "test_fraction")
DATA_SETTINGS += ("split_seed", "subset", "cache_dir")  # what decides a run's splits


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) → float in [0, 1]."""
    return images.float() / 255 if images.dtype == torch.uint8 else images.float()


def avgpool_bicubic(images: torch.Tensor, size: int = 8) -> torch.Tensor:
    """Average-pool float images to size×size, then bicubic back to their size, clamped to [0, 1]."""
    height, width = images.shape[-2:]
    small = F.adaptive_avg_pool2d(images, size)
    return F.interpolate(small, size=(height, width), mode="bicubic", align_corners=False).clamp(
        0, 1
    )


def binary_entropy_floor(targets: torch.Tensor) -> float:
    """Mean binary entropy of target values in [0, 1]: the lowest BCE any prediction can reach."""
    p = targets.double().flatten()
    entropy = -(torch.xlogy(p, p) + torch.xlogy(1 - p, 1 - p))
    return float(entropy.mean())


def reconstruction_scores(predictions: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """The reconstruction task's test scores (bce, mse, psnr, ssim) for predicted images in [0, 1]."""
    per_image: dict[str, list[torch.Tensor]] = {"bce": [], "mse": [], "psnr": [], "ssim": []}
    for start in range(0, len(targets), EVAL_BATCH):
        prediction = predictions[start : start + EVAL_BATCH].float()
        target = targets[start : start + EVAL_BATCH].float()
        per_image["bce"].append(metrics.bce(torch.logit(prediction, eps=1e-6), target))
        per_image["mse"].append(metrics.mse(prediction, target))
        per_image["psnr"].append(metrics.psnr(prediction, target))
        per_image["ssim"].append(metrics.ssim(prediction, target))
    return {name: float(torch.cat(values).mean()) for name, values in per_image.items()}


@dataclass
class PCABasis:
    """Pixel mean and the principal directions (columns), largest variance first."""

    mean: torch.Tensor  # (D,) float64
    components: torch.Tensor  # (D, min(N, D)) float64

    def reconstruct(self, images: torch.Tensor, k: int) -> torch.Tensor:
        """Project float images onto the top-k components and back; clamped to [0, 1]."""
        flat = images.flatten(1).double() - self.mean
        top = self.components[:, :k]
        restored = (flat @ top) @ top.T + self.mean
        return restored.clamp(0, 1).to(images.dtype).view_as(images)


def fit_pca(train: torch.Tensor) -> PCABasis:
    """PCA of float images (N, C, H, W) on the CPU, in float64.

    With more images than pixels, the eigenvectors of the pixel covariance (accumulated in
    chunks); with fewer, the SVD of the centred images, far cheaper and holding every component
    with non-zero variance (the others are arbitrary, so they are left out).
    """
    flat = train.flatten(1)
    chunks = range(0, len(flat), GRAM_CHUNK)  # float64 a chunk at a time: CIFAR-10 whole is 1.2 GB
    mean = sum(flat[start : start + GRAM_CHUNK].double().sum(0) for start in chunks) / len(flat)
    if len(flat) <= flat.shape[1]:
        _, _, right = torch.linalg.svd(flat.double() - mean, full_matrices=False)
        return PCABasis(mean=mean, components=right.T.contiguous())
    gram = torch.zeros(flat.shape[1], flat.shape[1], dtype=torch.float64)
    for start in chunks:
        centred = flat[start : start + GRAM_CHUNK].double() - mean
        gram += centred.T @ centred
    _, vectors = torch.linalg.eigh(gram)  # eigenvalues ascending
    return PCABasis(mean=mean, components=vectors.flip(1).contiguous())


def cached_pca(train_uint8: torch.Tensor, cache_dir: Path) -> PCABasis:
    """fit_pca on the train split, loaded from cache_dir when these exact images were fitted before
    (a broken cache file is refitted, one that cannot be written costs a refit next time)."""
    key = hashlib.sha256(f"{PCA_FORMAT}|".encode())
    key.update(train_uint8.contiguous().numpy().tobytes())
    shape = "x".join(map(str, train_uint8.shape[1:]))
    path = Path(cache_dir).expanduser() / f"pca-{shape}-{key.hexdigest()[:16]}.pt"
    dimension = train_uint8[0].numel()
    saved = read_cache(
        path,
        lambda saved: (
            isinstance(saved, dict)
            and getattr(saved.get("mean"), "shape", None) == (dimension,)
            and getattr(saved.get("components"), "shape", (0,))[0] == dimension
        ),
    )
    if saved is not None:
        return PCABasis(mean=saved["mean"], components=saved["components"])
    log.info("Fitting PCA on %d train images (cached in %s)", len(train_uint8), path)
    basis = fit_pca(to_unit(train_uint8))
    write_cache({"mean": basis.mean, "components": basis.components}, path)
    return basis


def recorded_splits(run_dirs: list[Path], data: dict) -> dict[str, torch.Tensor]:
    """The uint8 RGB splits of runs that share their data, exactly as the runs had them: read
    from the root their data.json records, and refused (AelabError, naming what changed) when
    the images there are no longer theirs. `data`: their data settings (config's data node)."""
    settings = {key: data[key] for key in DATA_SETTINGS if key in data}
    datamodule = ImageDataModule(**settings, download=False, color_space="rgb")
    recorded = next((path for path in run_dirs if identity.recorded(path)), None)
    if recorded is None:
        log.warning(
            "The runs have no %s (they started before aelab recorded a run's data): the "
            "baselines are computed on %s as it is now, which may not be the runs' data.",
            identity.DATA_JSON,
            data.get("root"),
        )
        datamodule.setup()
        return datamodule.splits
    saved = identity.use_run_data(datamodule, recorded)
    datamodule.setup()
    identity.check(
        recorded,
        datamodule,
        saved,
        "The baselines cannot be computed on the runs' data",
        "Restore the images as they were to compare the runs with the baselines on their own "
        "test split.",
    )
    return datamodule.splits


@dataclass
class BaselineRow:
    """One row of the report's table: a named predictor, its code size and its test scores."""

    name: str
    latent_size: int
    parameters: int
    scores: dict[str, float]


def reconstruction_baselines(
    splits: dict[str, torch.Tensor], latent_sizes: list[int], cache_dir: Path, pool_size: int = 8
) -> list[BaselineRow]:
    """avg-pool + bicubic, and PCA for each latent size smaller than the input, on the test split."""
    test = to_unit(splits["test"])
    channels = test.shape[1]
    rows = [
        BaselineRow(
            f"avg-pool to {pool_size}×{pool_size} + bicubic",
            channels * pool_size * pool_size,
            0,
            reconstruction_scores(avgpool_bicubic(test, pool_size), test),
        )
    ]
    dimension = test[0].numel()
    sizes = sorted({k for k in latent_sizes if k < dimension})
    if sizes:
        basis = cached_pca(splits["train"], cache_dir)
        for k in sizes:
            predictions = basis.reconstruct(test, k)
            scores = reconstruction_scores(predictions, test)
            rows.append(BaselineRow(f"PCA, k = {k:,}", k, k * dimension + dimension, scores))
    return rows
