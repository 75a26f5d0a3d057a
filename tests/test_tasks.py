import pytest
import torch
import torch.nn.functional as F

from aelab.errors import AelabError
from aelab.models import ConvAutoEncoder
from aelab.models.network import build_network
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
    assert build_network(checkpoint["aelab"]["model"]).config() == task.model.config()


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


@pytest.mark.parametrize("task_name", ["reconstruction", "colorization"])
def test_scores_under_bf16_mixed_equal_float32_for_the_same_logits(task_name, tmp_path):
    """Validation under Trainer(precision="bf16-mixed") scores the same logits as float32 does."""
    import lightning as L
    from torch.utils.data import DataLoader

    from aelab.data.color import rgb_to_lab_normalized
    from aelab.tasks import ColorizationTask

    torch.manual_seed(0)
    rgb = torch.rand(6, 3, 32, 32).clamp(0.05, 0.95)
    if task_name == "colorization":
        task_class, batch = ColorizationTask, rgb_to_lab_normalized(rgb)
    else:
        task_class, batch = ReconstructionTask, rgb
    network = ConvAutoEncoder(
        in_channels=task_class.in_channels, out_channels=task_class.out_channels
    )
    targets = task_class(network).split_batch(batch)[1]
    logits = (torch.logit(targets) + 0.5 * torch.randn_like(targets)).to(torch.bfloat16)
    results = {}
    for precision in ("32-true", "bf16-mixed"):
        task = task_class(network)
        task.forward = lambda inputs: logits[: len(inputs)]  # bf16, as autocast's network gives
        trainer = L.Trainer(
            accelerator="cpu", precision=precision, logger=False, enable_progress_bar=False,
            enable_model_summary=False, default_root_dir=tmp_path,
        )  # fmt: skip
        (results[precision],) = trainer.validate(
            task, dataloaders=DataLoader(batch, batch_size=6), verbose=False
        )
    assert set(results["32-true"]) >= {f"val/{name}" for name in task_class.score_names}
    assert results["bf16-mixed"] == results["32-true"]
    # The metric functions themselves, called under autocast by any other caller.
    prediction, truth = torch.sigmoid(logits.float()), targets
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = [f(prediction, truth) for f in (metrics.ssim, metrics.psnr, metrics.mse)]
    outside = [f(prediction, truth) for f in (metrics.ssim, metrics.psnr, metrics.mse)]
    assert all(a.dtype == torch.float32 for a in under_autocast)
    assert all(torch.equal(a, b) for a, b in zip(under_autocast, outside, strict=True))
