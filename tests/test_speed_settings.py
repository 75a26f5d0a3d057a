"""Process and Trainer settings that make steps cheaper without changing what a run computes."""

import copy
import ctypes
import os

import pytest
import torch
from aelab.profiler import NoProfiler
from hydra.utils import instantiate
from lightning.pytorch.profilers import SimpleProfiler

from aelab import nvml
from aelab.runtime.train import build
from tests.conftest import compose_config


def _cdll_that(loads: bool, calls: list):
    def cdll(name):
        calls.append(name)
        if not loads:
            raise OSError(f"{name}: cannot open shared object file")
        return object()

    return cdll


def test_nvml_check_is_dropped_only_where_nvml_cannot_load(monkeypatch):
    monkeypatch.setenv(nvml.FLAG, "1")
    available = torch.cuda.is_available()  # asked the NVML way
    calls = []
    real_cdll = ctypes.CDLL
    monkeypatch.setattr(ctypes, "CDLL", _cdll_that(loads=True, calls=calls))
    assert not nvml.drop_check_without_nvml()
    assert os.environ[nvml.FLAG] == "1"  # NVML there: Lightning's fork-safe check stays

    monkeypatch.setattr(ctypes, "CDLL", _cdll_that(loads=False, calls=calls))
    assert nvml.drop_check_without_nvml()
    assert nvml.FLAG not in os.environ
    assert calls == [nvml.LIBRARY, nvml.LIBRARY]
    monkeypatch.setattr(ctypes, "CDLL", real_cdll)
    assert torch.cuda.is_available() == available  # asked the CUDA runtime's way: same answer


def test_nvml_check_left_alone_when_nobody_asked_for_it(monkeypatch):
    calls = []
    monkeypatch.delenv(nvml.FLAG, raising=False)
    monkeypatch.setattr(ctypes, "CDLL", _cdll_that(loads=False, calls=calls))
    assert not nvml.drop_check_without_nvml()
    assert calls == []


def test_no_profiler_hands_out_one_reusable_context():
    profiler = NoProfiler()
    first, second = profiler.profile("a"), profiler.profile("b")
    assert first is second
    with first, second:  # nested and reused, as Lightning's hooks call into each other
        pass
    assert profiler.summary() == ""


@pytest.mark.parametrize(
    ("override", "expected"), [([], NoProfiler), (["trainer.profiler=simple"], SimpleProfiler)]
)
def test_trainer_profiler_from_config(override, expected, tmp_path):
    cfg = compose_config(["trainer.accelerator=cpu", *override], tmp_path)
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    assert type(trainer.profiler) is expected


def test_default_optimizer_updates_exactly_like_plain_adam(image_folder, tmp_path):
    """foreach only batches Adam's loop over parameters: published metrics stay reproducible."""
    overrides = ["data=folder", f"data.root={image_folder}", f"paths.cache_dir={tmp_path}"]
    cfg = compose_config(overrides, tmp_path)
    task, datamodule = build(cfg)
    datamodule.setup("fit")
    inputs, targets = task.split_batch(datamodule.to_model_space(datamodule.splits["train"][:16]))

    def trained(make_optimizer) -> torch.Tensor:
        model = copy.deepcopy(task)
        optimizer = make_optimizer(model)
        for _ in range(5):
            optimizer.zero_grad()
            model.loss_fn(model(inputs), targets).backward()
            optimizer.step()
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    assert task.configure_optimizers().defaults["foreach"] is True
    configured = trained(lambda model: model.configure_optimizers())
    plain = trained(lambda model: torch.optim.Adam(model.parameters(), lr=cfg.optimizer.lr))
    assert not torch.equal(configured, torch.cat([p.flatten() for p in task.parameters()]))
    assert torch.equal(configured, plain)
