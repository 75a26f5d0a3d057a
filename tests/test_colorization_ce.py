"""Colorization as classification over quantized ab (loss=ce): bins, soft encoding, rebalancing,
annealed-mean decoding, the new scores, and a smoke training."""

import json

import pytest
import torch
import torch.nn.functional as F
from kornia.color import lab_to_rgb
from omegaconf import OmegaConf

from aelab.config.schema import SCHEMAS, config_problems
from aelab.data.color import AB_OFFSET, AB_SCALE, rgb_to_lab_normalized
from aelab.errors import AelabError
from aelab.models import ConvAutoEncoder
from aelab.runtime.evaluate import evaluate
from aelab.runtime.train import train
from aelab.tasks import ColorizationTask, ReconstructionTask, ab_bins, metrics
from tests.conftest import compose_config
from tests.test_evaluate import eval_config

Q = 229  # centres of the step-10 grid over [-110, 110]² in sRGB at some L of a 0.1-step sweep


def normalised(ab: torch.Tensor) -> torch.Tensor:
    return (ab + AB_OFFSET) / AB_SCALE


def test_every_bin_centre_is_an_srgb_colour_at_some_lightness_and_the_rest_are_not():
    centres = ab_bins.bin_centres()
    assert centres.shape == (Q, 2) and ab_bins.bin_count() == Q
    assert ((centres % 10) == 0).all() and centres.abs().max() <= 110
    lightness = torch.arange(0, 100.05, 0.1)
    grid = torch.stack(torch.meshgrid(*[torch.arange(-110.0, 111, 10)] * 2, indexing="ij"), -1)
    grid = grid.reshape(-1, 2)
    kept = ab_bins.in_gamut_somewhere(grid, lightness)
    assert int(kept.sum()) == Q and torch.equal(grid[kept], centres)
    # Each kept centre has an L whose RGB is inside [0, 1]; (100, 100) has none.
    for a, b in centres[::20].tolist():
        lab = torch.stack([lightness, torch.full_like(lightness, a), torch.full_like(lightness, b)])
        rgb = lab_to_rgb(lab[None, :, :, None], clip=False)[0, :, :, 0]
        assert ((rgb >= -1e-6) & (rgb <= 1 + 1e-6)).all(0).any()
    assert not ab_bins.in_gamut_somewhere(torch.tensor([[100.0, 100.0]]), lightness).any()
    assert torch.tensor([0.0, 0.0]) in centres  # grey is a bin


def test_soft_encoding_sums_to_one_and_peaks_at_the_true_bin():
    index, weight = ab_bins.soft_encoding_table()
    assert index.shape == weight.shape == (ab_bins.TABLE_SIZE**2, 5)
    assert torch.allclose(weight.sum(1), torch.ones(len(weight)))
    centres = ab_bins.bin_centres()
    # A pixel exactly on a bin's centre: that bin first, with the largest weight.
    target = normalised(centres.T[None, :, :, None])  # (1, 2, Q, 1)
    cells = ab_bins.table_cells(target)[0, :, 0]
    assert torch.equal(index[cells, 0], torch.arange(Q))
    assert (weight[cells, 0] > weight[cells, 1:].max(1).values).all()
    # Anywhere else: the first index is the nearest bin (a brute-force search agrees).
    ab = torch.rand(500, 2) * 200 - 100
    cells = ab_bins.table_cells(normalised(ab.T[None, :, :, None]))[0, :, 0]
    cell_ab = torch.stack([cells // ab_bins.TABLE_SIZE, cells % ab_bins.TABLE_SIZE], 1) - 128.0
    assert (cell_ab - ab).abs().max() <= 0.5 + 1e-4
    distances = torch.cdist(cell_ab, centres)  # ties (a cell halfway between bins) either way
    assert torch.allclose(distances.gather(1, index[cells, :1])[:, 0], distances.min(1).values)
    assert (weight[cells, 0] >= weight[cells, 1:].max(1).values).all()


def test_rebalancing_weights_have_expectation_one_under_the_prior():
    counts = torch.rand(Q) ** 4 * 1000
    prior = ab_bins.smoothed_distribution(counts)
    assert torch.isclose(prior.sum(), torch.tensor(1.0)) and (prior > 0).all()
    for rebalance in (0.0, 0.5, 1.0):
        weights = ab_bins.rebalancing_weights(prior, rebalance)
        assert torch.isclose((prior * weights).sum(), torch.tensor(1.0), atol=1e-5)
    assert torch.allclose(ab_bins.rebalancing_weights(prior, 0.0), torch.ones(Q))  # off
    inverse = ab_bins.rebalancing_weights(prior, 1.0)
    assert torch.allclose(inverse * prior, torch.full((Q,), 1 / Q), rtol=1e-4)
    half = ab_bins.rebalancing_weights(prior, 0.5)  # rare bins weigh more, common ones less
    assert half[prior.argmin()] > 1 > half[prior.argmax()]


def test_annealed_mean_is_the_expectation_at_one_and_tends_to_the_mode():
    torch.manual_seed(0)
    peak = F.one_hot(torch.randint(Q, (2, 3, 4)), Q).permute(0, 3, 1, 2)
    logits = torch.randn(2, Q, 3, 4) + 5 * peak  # a clear mode at a random bin
    centres = ab_bins.bin_centres()
    expectation = torch.einsum("bqhw,qc->bchw", logits.softmax(1), centres)
    assert torch.allclose(ab_bins.annealed_mean(logits, 1.0), normalised(expectation), atol=1e-6)
    mode = normalised(centres[logits.argmax(1)].permute(0, 3, 1, 2))
    assert torch.equal(ab_bins.annealed_mean(logits, 0.0), mode)
    errors = [(ab_bins.annealed_mean(logits, t) - mode).abs().max() for t in (1.0, 0.38, 0.01)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-4


def test_cross_entropy_is_the_dense_soft_target_cross_entropy_weighted_per_pixel():
    torch.manual_seed(0)
    tables = ab_bins.BinTables(rebalance=0.5)
    tables.set_prior(ab_bins.smoothed_distribution(torch.rand(Q) ** 3))
    target = rgb_to_lab_normalized(torch.rand(2, 3, 4, 4))[:, 1:]
    logits = torch.randn(2, Q, 4, 4)
    cells = ab_bins.table_cells(target)
    dense = torch.zeros(2, Q, 4, 4).scatter_(
        1, tables.index[cells].permute(0, 3, 1, 2), tables.weight[cells].permute(0, 3, 1, 2)
    )
    nearest = tables.index[cells][..., 0]
    pixel_weight = ab_bins.rebalancing_weights(tables.prior, 0.5)[nearest]
    expected = (-(dense * logits.log_softmax(1)).sum(1) * pixel_weight).mean()
    assert torch.allclose(tables.cross_entropy(logits, target), expected)
    # Logits at half resolution: the targets are averaged down to them.
    half = torch.randn(2, Q, 2, 2)
    pooled = F.avg_pool2d(target, 2)
    assert torch.allclose(tables.cross_entropy(half, target), tables.cross_entropy(half, pooled))


def test_colorfulness_and_auc_scores():
    grey = torch.rand(3, 1, 8, 8).expand(3, 3, 8, 8)
    assert torch.allclose(metrics.colorfulness(grey), torch.zeros(3), atol=1e-4)
    red = torch.zeros(1, 3, 8, 8)
    red[:, 0] = 1  # rg = 255, yb = 127.5, no spread: 0.3·|(255, 127.5)|
    assert torch.isclose(
        metrics.colorfulness(red), torch.tensor([0.3 * (255**2 + 127.5**2) ** 0.5])
    )
    truth = torch.zeros(2, 3, 4, 4)
    assert torch.allclose(metrics.ab_auc(truth, truth), torch.full((2,), 100.0))
    off = truth.clone()
    off[:, 1] = 75  # every pixel 75 units away: half the thresholds
    assert torch.allclose(metrics.ab_auc(off, truth), torch.full((2,), 50.0))
    off[0, 1, 0] = 300  # one row beyond 150: 0 for those pixels
    weight = torch.ones(2, 4, 4)
    weight[0, 0] = 3  # the bad row weighs 3 of 6 rows' worth
    assert torch.isclose(metrics.ab_auc(off, truth)[0], torch.tensor(50.0 * 12 / 16))
    assert torch.isclose(metrics.ab_auc(off, truth, weight)[0], torch.tensor(50.0 * 12 / 24))
    # Pooled over the split: image 0's extra weight counts for its pixels, as one big image.
    means = metrics.ScoreMeans(["auc_rebalanced"])
    means.update({"auc_rebalanced": metrics.pooled_ab_auc(off, truth, weight)})
    pooled = means.means["auc_rebalanced"].compute()
    assert torch.isclose(pooled, torch.tensor(50.0 * (12 + 16) / (24 + 16)))


def test_the_ce_task_builds_a_bin_head_and_scores_the_grey_baseline_alike():
    network = ConvAutoEncoder(in_channels=1, out_channels=ColorizationTask.output_channels("ce"))
    task = ColorizationTask(network, loss="ce", temperature=0.38)
    assert network.out_channels == Q and ColorizationTask.output_channels("mse") == 2
    lab = rgb_to_lab_normalized(torch.rand(3, 3, 32, 32))
    inputs, targets = task.split_batch(lab)
    logits = task(inputs)
    assert logits.shape == (3, Q, 8, 8)  # the head at a quarter of the size (ce_stride=4)
    scores = task.compute_scores(inputs, targets, logits)
    auc, weight = scores.pop("auc_rebalanced")  # pooled over pixels: with each image's weight
    assert auc.shape == weight.shape == (3,) and (weight > 0).all()
    assert set(scores) | {"auc_rebalanced"} == set(task.score_names)
    assert all(v.shape == (3,) for v in scores.values())
    grey = task.compute_scores(inputs, targets, task.baseline_logits(inputs, targets))
    assert torch.allclose(grey["chroma"], torch.zeros(3), atol=1e-3)
    assert torch.allclose(grey["colorfulness"], torch.zeros(3), atol=1e-2)
    assert (grey["colorfulness_true"] > 5).all() and (grey["auc"] < 100).all()
    assert task.loss_fn(logits, targets).item() > 0
    rows = task.preview_rows(lab)
    assert len(rows) == 3 and all(row.shape == (3, 3, 32, 32) for row in rows)
    with pytest.raises(AelabError, match="1 input and 229 output channels"):
        ColorizationTask(ConvAutoEncoder(in_channels=1, out_channels=2), loss="ce")


def test_the_bin_head_runs_at_one_over_the_stride_and_at_one_is_the_network_itself():
    from aelab.tasks.colorization import classifier_logits

    torch.manual_seed(0)
    lightness = torch.rand(2, 1, 32, 32)
    network = ConvAutoEncoder(in_channels=1, out_channels=Q)
    assert torch.equal(classifier_logits(network, lightness, 1), network(lightness))
    assert classifier_logits(network, lightness, 2).shape == (2, Q, 16, 16)
    assert classifier_logits(network, lightness, 4).shape == (2, Q, 8, 8)
    flat = ConvAutoEncoder(in_channels=1, out_channels=Q, pooling="none")
    assert torch.equal(classifier_logits(flat, lightness, 4), flat(lightness))  # nothing to skip


def test_loss_ce_with_reconstruction_is_refused_in_one_line(tmp_path):
    cfg = compose_config(["loss=ce"], tmp_path)
    (problem,) = config_problems(cfg, SCHEMAS["train"])
    assert "loss=ce: classification over quantized ab is for task=colorization only" in problem
    assert config_problems(compose_config(["loss=ce", "task=colorization"], tmp_path),
                           SCHEMAS["train"]) == []  # fmt: skip
    for bad in ("task.rebalance=1.5", "task.temperature=-1", "task.ce_stride=3"):
        (problem,) = config_problems(compose_config(["task=colorization", bad], tmp_path),
                                     SCHEMAS["train"])  # fmt: skip
        assert problem.startswith(bad)
    with pytest.raises(AelabError, match="is for task=colorization only") as error:
        ReconstructionTask(ConvAutoEncoder(), loss="ce")
    assert "\n" not in str(error.value)


@pytest.mark.slow
def test_smoke_training_with_loss_ce(smoke_overrides, tmp_path):
    run_dir = tmp_path / "run"
    overrides = [*smoke_overrides, "task=colorization", "loss=ce", "logger=none"]
    cfg = compose_config(overrides, run_dir)
    train(cfg, run_dir)
    (run_dir / ".hydra").mkdir()
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")  # as Hydra saves it, for eval.py
    results = json.loads((run_dir / "metrics.json").read_text())
    assert results["loss"] == "ce" and results["model"]["out_channels"] == Q
    test = results["test"]
    for name in ("auc", "auc_rebalanced", "colorfulness", "colorfulness_true", "chroma"):
        assert name in test and f"baseline/{name}" in test
    assert 0 < test["auc"] <= 100 and test["baseline/colorfulness"] < 0.1
    assert test["colorfulness_true"] > 1
    cached = list((tmp_path / "cache").glob("ab-prior-*.pt"))
    assert len(cached) == 1
    prior = torch.load(cached[0], weights_only=True)
    assert prior.shape == (Q,) and torch.isclose(prior.sum(), torch.tensor(1.0))

    # eval.py decodes the same checkpoint at the run's temperature, the mean and the mode
    checkpoint = f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}"
    decoded = {
        t: evaluate(eval_config([checkpoint, *t], tmp_path / f"eval{t}"), tmp_path / f"eval{t}")
        for t in ((), ("temperature=1",), ("temperature=0",))
    }
    same, mean, mode = (decoded[t] for t in ((), ("temperature=1",), ("temperature=0",)))
    assert same["metrics"] == pytest.approx(test, abs=1e-6) and same["temperature"] == 0.38
    assert (mean["temperature"], mode["temperature"]) == (1, 0)
    assert mean["metrics"]["loss"] == pytest.approx(test["loss"], abs=1e-6)  # logits unchanged
    assert len({mean["metrics"]["chroma"], test["chroma"], mode["metrics"]["chroma"]}) == 3
