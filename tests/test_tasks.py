import pytest
import torch
import torch.nn.functional as F

from aelab.errors import AelabError
from aelab.models import ConvAutoEncoder
from aelab.tasks import ReconstructionTask, metrics
from aelab.tasks.losses import bce_loss, mse_loss


def test_losses_act_on_logits():
    logits, target = torch.randn(4, 3, 8, 8), torch.rand(4, 3, 8, 8)
    assert torch.allclose(
        bce_loss(logits, target), F.binary_cross_entropy(logits.sigmoid(), target)
    )
    assert torch.allclose(mse_loss(logits, target), ((logits.sigmoid() - target) ** 2).mean())


def test_per_image_metrics_match_their_formulas():
    target = torch.rand(3, 3, 16, 16)
    prediction = (target + 0.1 * torch.randn_like(target)).clamp(0, 1)
    per_image_mse = ((prediction - target) ** 2).mean(dim=(1, 2, 3))
    assert torch.allclose(metrics.mse(prediction, target), per_image_mse)
    assert torch.allclose(metrics.psnr(prediction, target), 10 * torch.log10(1 / per_image_mse))
    assert metrics.psnr(target, target).tolist() == [metrics.MAX_PSNR_DB] * 3
    assert torch.allclose(metrics.ssim(target, target), torch.ones(3))
    assert (metrics.ssim(prediction, target) < 1).all()


def test_reconstruction_scores_are_per_image_and_named():
    task = ReconstructionTask(ConvAutoEncoder())
    batch = torch.rand(5, 3, 32, 32)
    inputs, targets = task.split_batch(batch)
    assert inputs is batch and targets is batch
    scores = task.compute_scores(inputs, targets, task(inputs))
    assert set(scores) == set(task.score_names) == {"bce", "mse", "psnr", "ssim"}
    assert all(v.shape == (5,) for v in scores.values())
    rows = task.preview_rows(batch)
    assert (
        len(rows) == 2 and rows[1].shape == batch.shape and 0 <= rows[1].min() <= rows[1].max() <= 1
    )


def test_task_refuses_an_unknown_loss_or_a_network_of_the_wrong_shape():
    with pytest.raises(AelabError, match="loss must be one of"):
        ReconstructionTask(ConvAutoEncoder(), loss="l1")
    with pytest.raises(AelabError, match="3 input and 3 output"):
        ReconstructionTask(ConvAutoEncoder(in_channels=1, out_channels=2))


def test_checkpoint_carries_a_plain_description_of_the_network():
    task = ReconstructionTask(ConvAutoEncoder(widths=[4, 8], pooling="avg"), loss="mse")
    checkpoint: dict = {}
    task.on_save_checkpoint(checkpoint)
    assert checkpoint["aelab"]["task"] == "reconstruction"
    assert checkpoint["aelab"]["loss"] == "mse"
    assert ConvAutoEncoder(**checkpoint["aelab"]["model"]).config() == task.model.config()


def test_fast_ssim_equals_torchmetrics():
    from torchmetrics.functional.image import structural_similarity_index_measure

    target = torch.rand(6, 3, 32, 32)
    prediction = (target + 0.2 * torch.randn_like(target)).clamp(0, 1)
    reference = structural_similarity_index_measure(
        prediction, target, data_range=1.0, reduction="none"
    )
    assert torch.allclose(metrics.ssim(prediction, target), reference, atol=1e-5)
    gray = torch.rand(2, 1, 50, 37)
    reference = structural_similarity_index_measure(
        gray * 0.9, gray, data_range=1.0, reduction="none"
    )
    assert torch.allclose(metrics.ssim(gray * 0.9, gray), reference, atol=1e-5)


def test_colorization_splits_lab_and_scores_the_grayscale_baseline():
    from aelab.data.color import rgb_to_lab_normalized
    from aelab.tasks import ColorizationTask

    task = ColorizationTask(ConvAutoEncoder(in_channels=1, out_channels=2), loss="mse")
    rgb = torch.rand(4, 3, 32, 32)
    lab = rgb_to_lab_normalized(rgb)
    inputs, targets = task.split_batch(lab)
    assert inputs.shape == (4, 1, 32, 32) and targets.shape == (4, 2, 32, 32)
    assert task(inputs).shape == targets.shape
    perfect = task.compute_scores(inputs, targets, torch.logit(targets.clamp(1e-6, 1 - 1e-6)))
    assert perfect["delta_e"].max() < 0.1 and perfect["psnr"].min() > 40
    assert torch.allclose(perfect["chroma"], perfect["chroma_true"], atol=0.05)
    grey = task.compute_scores(inputs, targets, task.baseline_logits(inputs, targets))
    assert torch.allclose(grey["chroma"], torch.zeros(4), atol=1e-3)
    assert (grey["chroma_true"] > 10).all() and (grey["delta_e"] > 5).all()
    rows = task.preview_rows(lab)
    assert len(rows) == 3 and all(r.shape == (4, 3, 32, 32) for r in rows)
    assert torch.allclose(rows[2], rgb, atol=1e-3)
