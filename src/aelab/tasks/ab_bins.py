"""The quantized ab plane of colorization as classification (Zhang, Isola and Efros, ECCV 2016).

Bins: centres on a grid of step 10 over a, b ∈ [-110, 110]; a centre is kept when the Lab colour
(L, a, b) is inside the sRGB gamut for some L of a sweep over [0, 100] in steps of 0.1. Targets
are soft-encoded over the 5 nearest bins (Gaussian, σ = 5) through a table over a 1-unit ab grid,
so a training step gathers instead of measuring distances. Rebalancing weights come from the
training split's bin distribution, smoothed with a Gaussian of σ = 5 over the ab plane.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from kornia.color import lab_to_rgb
from torch import nn

from aelab.data.cache_file import read_cache, write_cache
from aelab.data.color import AB_OFFSET, AB_SCALE
from aelab.errors import AelabError
from aelab.models import ConvAutoEncoder
from aelab.tasks.losses import soft_cross_entropy

log = logging.getLogger(__name__)

GRID_STEP = 10.0
GRID_LIMIT = 110.0
LIGHTNESS_STEP = 0.1
GAMUT_TOLERANCE = 1e-6  # linear-RGB slack for float32 rounding at the gamut's edge
NEIGHBOURS = 5
SIGMA = 5.0
TABLE_LIMIT = 128  # the table covers a, b ∈ [-128, 128], all that normalised ab can hold
TABLE_SIZE = 2 * TABLE_LIMIT + 1
PRIOR_FORMAT = (
    2  # 2: checksummed (aelab.data.cache_file); bump when the cached prior's meaning changes
)
DEFAULT_STRIDE = 4  # logits at a quarter of the image size, as Zhang et al. predict


@functools.cache
def bin_centres() -> torch.Tensor:
    """(Q, 2) ab centres of the in-gamut bins, a-major order."""
    steps = round(2 * GRID_LIMIT / GRID_STEP) + 1
    axis = torch.linspace(-GRID_LIMIT, GRID_LIMIT, steps)
    a, b = torch.meshgrid(axis, axis, indexing="ij")
    centres = torch.stack([a.flatten(), b.flatten()], dim=1)
    lightness = torch.arange(0.0, 100.0 + LIGHTNESS_STEP / 2, LIGHTNESS_STEP)
    keep = in_gamut_somewhere(centres, lightness)
    return centres[keep]


def in_gamut_somewhere(centres: torch.Tensor, lightness: torch.Tensor) -> torch.Tensor:
    """(N,) whether each ab centre is an sRGB colour at one L of `lightness` at least."""
    lab = torch.cat(
        [
            lightness.repeat_interleave(len(centres))[None, :, None],
            centres.repeat(len(lightness), 1).T[:, :, None],
        ]
    )[None]
    rgb = lab_to_rgb(lab, clip=False)[0, :, :, 0]  # (3, L×N)
    fits = ((rgb >= -GAMUT_TOLERANCE) & (rgb <= 1 + GAMUT_TOLERANCE)).all(0)
    return fits.view(len(lightness), len(centres)).any(0)


def bin_count() -> int:
    return len(bin_centres())


@functools.cache
def soft_encoding_table() -> tuple[torch.Tensor, torch.Tensor]:
    """For each cell of the 1-unit ab grid (flattened a-major, TABLE_SIZE² cells): the indices of
    its NEIGHBOURS nearest bins, nearest first, and their Gaussian weights summing to 1."""
    axis = torch.arange(-TABLE_LIMIT, TABLE_LIMIT + 1, dtype=torch.float32)
    a, b = torch.meshgrid(axis, axis, indexing="ij")
    cells = torch.stack([a.flatten(), b.flatten()], dim=1)
    distances = torch.cdist(cells, bin_centres())
    nearest, index = distances.topk(NEIGHBOURS, dim=1, largest=False)
    weight = torch.softmax(-nearest.square() / (2 * SIGMA**2), dim=1)
    return index, weight


def table_cells(ab_normalized: torch.Tensor) -> torch.Tensor:
    """(B, 2, H, W) normalised ab → (B, H, W) flat cell index of the 1-unit grid."""
    ab = ab_normalized.float() * AB_SCALE - AB_OFFSET
    cell = ab.round().clamp(-TABLE_LIMIT, TABLE_LIMIT).long() + TABLE_LIMIT
    return cell[:, 0] * TABLE_SIZE + cell[:, 1]


def nearest_bins(ab_normalized: torch.Tensor) -> torch.Tensor:
    """(B, 2, H, W) normalised ab → (B, H, W) index of each pixel's nearest bin."""
    index, _ = soft_encoding_table()
    return index[:, 0].to(ab_normalized.device)[table_cells(ab_normalized)]


def smoothed_distribution(counts: torch.Tensor) -> torch.Tensor:
    """Bin counts → p̃: the empirical distribution blurred by a Gaussian (σ = 5) over the ab
    plane, each bin's mass spread over the bins and kept (columns sum to 1)."""
    centres = bin_centres()
    kernel = torch.exp(-torch.cdist(centres, centres).square() / (2 * SIGMA**2))
    kernel = kernel / kernel.sum(0, keepdim=True)
    p = counts.double() / counts.sum().clamp_min(1)
    smoothed = kernel.double() @ p
    return (smoothed / smoothed.sum()).float()


def rebalancing_weights(prior: torch.Tensor, rebalance: float) -> torch.Tensor:
    """Zhang's w ∝ ((1 − λ)·p̃ + λ/Q)⁻¹ with λ = 1 − rebalance, scaled so that Σ p̃·w = 1:
    rebalance = 0 gives uniform weights (off), 0.5 Zhang's default, 1 pure inverse frequency."""
    mixed = rebalance * prior.double() + (1 - rebalance) / len(prior)
    weights = 1 / mixed.clamp_min(1e-12)
    return (weights / (prior.double() * weights).sum()).float()


def annealed_mean(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """(B, Q, H, W) logits → (B, 2, H, W) normalised ab: the mean of softmax(logits / T) over the
    bin centres; T = 1 is the distribution's mean, T = 0 its mode."""
    centres = bin_centres().to(logits.device)
    logits = logits.float()
    if temperature <= 0:
        ab = centres[logits.argmax(1)].permute(0, 3, 1, 2)
    else:
        probabilities = torch.softmax(logits / temperature, dim=1)
        ab = torch.einsum("bqhw,qc->bchw", probabilities, centres)
    return (ab + AB_OFFSET) / AB_SCALE


class BinTables(nn.Module):
    """The soft-encoding table, the training prior p̃ and the weights drawn from it, as buffers
    (they follow the device; recomputed, never saved): one gather per pixel finds them all."""

    def __init__(self, rebalance: float = 0.5) -> None:
        super().__init__()
        self.rebalance = rebalance
        index, weight = soft_encoding_table()
        self.register_buffer("index", index, persistent=False)
        self.register_buffer("weight", weight, persistent=False)
        # Until a training split sets it: a uniform prior (weights 1).
        uniform = torch.full((bin_count(),), 1 / bin_count())
        self.register_buffer("prior", uniform, persistent=False)
        self.register_buffer("cell_weight", torch.ones(len(index)), persistent=False)
        self.register_buffer("cell_rarity", torch.ones(len(index)), persistent=False)

    def set_prior(self, prior: torch.Tensor) -> None:
        """Each table cell takes the loss weight and the inverse frequency of its nearest bin."""
        nearest = self.index[:, 0]
        prior = prior.to(self.prior.device)
        self.prior.copy_(prior)
        self.cell_weight.copy_(rebalancing_weights(prior, self.rebalance)[nearest])
        self.cell_rarity.copy_(1 / prior.clamp_min(1e-12)[nearest])

    def cross_entropy(self, logits: torch.Tensor, target_ab: torch.Tensor) -> torch.Tensor:
        """Rebalanced soft-encoded cross-entropy; targets are averaged down to the logits' size."""
        if target_ab.shape[-2:] != logits.shape[-2:]:
            target_ab = F.adaptive_avg_pool2d(target_ab.float(), logits.shape[-2:])
        cells = table_cells(target_ab)  # (B, H, W)
        index = self.index[cells].permute(0, 3, 1, 2)
        weight = self.weight[cells].permute(0, 3, 1, 2)
        return soft_cross_entropy(logits, index, weight, self.cell_weight[cells])

    def rarity(self, target_ab: torch.Tensor) -> torch.Tensor:
        """(B, H, W) inverse training frequency 1/p̃ of each pixel's nearest bin."""
        return self.cell_rarity[table_cells(target_ab)]


def split_digest(images: torch.Tensor) -> str:
    """A key for a split's content: the same images in the same order give the same key."""
    digest = hashlib.sha256(f"{PRIOR_FORMAT}|{tuple(images.shape)}|{bin_count()}".encode())
    digest.update(images.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def training_prior(images: torch.Tensor, to_lab, cache_dir: str | Path | None) -> torch.Tensor:
    """p̃ of a split of uint8 RGB images (N, 3, H, W); `to_lab` is the DataModule's
    to_model_space. Cached in cache_dir under the split's content key when one is given (a
    broken cache file is rebuilt, one that cannot be written costs a recount next time)."""
    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir).expanduser() / f"ab-prior-{split_digest(images)}.pt"
        cached = read_cache(cache_file, _is_prior)
        if cached is not None:
            return cached
    counts = torch.zeros(bin_count(), dtype=torch.float64)
    for chunk in images.split(1000):
        bins = nearest_bins(to_lab(chunk)[:, 1:])
        counts += torch.bincount(bins.flatten(), minlength=bin_count()).double()
    prior = smoothed_distribution(counts)
    if cache_file is not None:
        write_cache(prior, cache_file)
    return prior


def _is_prior(cached) -> bool:
    """A distribution over the bins: one finite, non-negative value per bin, summing to 1."""
    return (
        isinstance(cached, torch.Tensor)
        and cached.shape == (bin_count(),)
        and bool(torch.isfinite(cached).all() and (cached >= 0).all())
        and abs(float(cached.sum()) - 1) < 1e-3
    )


def classifier_logits(
    network: nn.Module, lightness: torch.Tensor, stride: int = DEFAULT_STRIDE
) -> torch.Tensor:
    """The network's bin logits at 1/stride of the input's size: a ConvAutoEncoder's last
    log2(stride) upsamplings left out (as many as it has), so the Q-channel head runs on fewer
    pixels; the decoded ab is upsampled instead (decode_bins). Any other network's output is its
    logits (stride 1: refuse_strided_plugin)."""
    if not isinstance(network, ConvAutoEncoder):
        return network(lightness)
    return network(lightness, upsamplings_left_out=max(int(stride).bit_length() - 1, 0))


def refuse_strided_plugin(network: nn.Module, stride: int) -> None:
    """Only a ConvAutoEncoder's upsamplings can be left out; another network ends in its own
    Q-channel head at the image's size, so its logits come at stride 1."""
    if stride > 1 and not isinstance(network, ConvAutoEncoder):
        raise AelabError(
            f"task.ce_stride={stride} computes loss=ce's bin logits at 1/{stride} of the image's "
            "side by leaving out the ConvAutoEncoder decoder's last upsamplings; a custom "
            f"network ({type(network).__name__}) has none aelab knows of: its output, "
            f"{bin_count()} channels at the image's size, is taken as the logits. Add "
            "task.ce_stride=1 (or downsample inside your network and keep the output full-size)."
        )


def decode_bins(logits: torch.Tensor, temperature: float, size: tuple[int, int]) -> torch.Tensor:
    """Bin logits → normalised ab (B, 2, *size): annealed mean, then bilinear to the image size."""
    ab = annealed_mean(logits, temperature)
    if ab.shape[-2:] != tuple(size):
        ab = F.interpolate(ab, size=tuple(size), mode="bilinear", align_corners=False)
    return ab
