"""A user's own network (model=custom model._target_=pkg.Class) goes through every entry point, and
importing its module is something only the user's command line asks for: a saved config or a
checkpoint naming it is refused unless the user names its module (trusted_modules=, --trust)."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import nn

from aelab import CONFIG_DIR
from aelab.analysis import predict_cli
from aelab.analysis.report import main as report_main
from aelab.analysis.runs import check_metrics
from aelab.analysis.tiles import tiling_for
from aelab.config.schema import check_config
from aelab.config.trusted import trusting
from aelab.errors import AelabError
from aelab.models.checkpoint import read_checkpoint
from aelab.models.network import build_network, check_output_size, network_facts, network_spec
from aelab.runtime.cli import eval_main
from aelab.runtime.resume import resume_arguments
from aelab.runtime.run_config import load_run_config
from aelab.tasks import ColorizationTask, ReconstructionTask
from aelab.tasks.ab_bins import bin_count
from tests.conftest import REPO, run_cli, run_entry, write_images
from tests.plugins.tiny_net import TinyNet

TINY = "tests.plugins.tiny_net.TinyNet"
PLUGIN = ["model=custom", f"model._target_={TINY}", "+model.width=8"]
TRUST = "trusted_modules=[tests.plugins]"
# The seed network's node and parameter count as they were before the model group existed.
SEED_NODE = {
    "_target_": "aelab.models.ConvAutoEncoder",
    "widths": [8, 12, 16],
    "kernel_size": 3,
    "pooling": "max",
    "upsample_mode": "nearest",
    "activation": "relu",
    "norm": "none",
    "blocks": 0,
    "latent_channels": None,
    "skips": False,
}
SEED_PARAMETERS = 4_911
SEED_OUTPUT_SUM = -95.66442108154297  # torch.manual_seed(0), the network, then rand(2, 3, 32, 32)


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def built(*overrides: str) -> nn.Module:
    node = OmegaConf.to_container(composed(*overrides).model)
    return build_network({**node, "in_channels": 3, "out_channels": 3})


def test_the_default_run_builds_the_seed_network_as_before():
    assert OmegaConf.to_container(composed().model) == SEED_NODE
    assert sum(p.numel() for p in built().parameters()) == SEED_PARAMETERS
    node = OmegaConf.to_container(composed("loss=mse", "pooling=none", "widths=wide").model)
    assert node == {**SEED_NODE, "pooling": "none", "widths": [32, 48, 64]}
    facts = network_facts(built(), 32)
    assert facts["latent_size"] == 1024 and facts["parameters"] == SEED_PARAMETERS
    torch.manual_seed(0)
    network = built()  # the same draws as ConvAutoEncoder() before the model group
    output = network(torch.rand(2, 3, 32, 32)).sum().item()
    assert output == pytest.approx(SEED_OUTPUT_SUM, abs=1e-4)


def test_a_custom_network_receives_only_its_own_keys():
    node = OmegaConf.to_container(composed(*PLUGIN).model)
    assert node == {"_target_": TINY, "width": 8}
    check_config(composed(*PLUGIN))
    with pytest.raises(AelabError, match="TinyNet takes no argument 'pooling'"):
        check_config(composed(*PLUGIN, "pooling=none"))  # a seed preset, asked for: refused
    with pytest.raises(AelabError, match=re.escape("model._target_")):
        check_config(composed("model=custom"))  # ??? : the class must be named


def test_the_code_size_is_measured_by_encode_or_said_unknown():
    tiny = build_network({"_target_": TINY, "in_channels": 3, "out_channels": 3})
    facts = network_facts(tiny, 32)
    assert (facts["latent_shape"], facts["latent_size"]) == ([4, 16, 16], 1024)
    assert facts["summary"].startswith("latent 4×16×16 = 1,024 values")
    plain = build_network(
        {"_target_": "tests.plugins.misfits.NoCodeNet", "in_channels": 3, "out_channels": 3}
    )
    facts = network_facts(plain, 32)
    assert facts["latent_size"] is None and "code size unknown" in facts["summary"]
    check_metrics({"status": "completed", "test": {}, "model": facts, "data": {}})


def test_a_plugin_whose_output_is_not_the_image_size_is_refused_before_training():
    network = build_network(
        {"_target_": "tests.plugins.misfits.HalvingNet", "in_channels": 3, "out_channels": 3}
    )
    with pytest.raises(AelabError, match=r"\(1, 3, 16, 16\); the task needs \(1, 3, 32, 32\)"):
        check_output_size(network, 32)


def test_measuring_a_plugin_leaves_its_state_as_it_was():
    spec = {"_target_": "tests.plugins.misfits.NormNet", "in_channels": 3, "out_channels": 3}
    network = build_network(spec)
    before = {k: v.clone() for k, v in network.state_dict().items()}
    check_output_size(network, 32)
    assert network_facts(network, 32)["latent_size"] == 3 * 32 * 32
    assert network.training
    assert all(torch.equal(before[k], v) for k, v in network.state_dict().items())


def test_a_built_plugin_without_its_spec_is_refused_by_the_task():
    with pytest.raises(
        AelabError, match=re.escape("model={'_target_': 'tests.plugins.tiny_net.TinyNet'")
    ):
        ReconstructionTask(model=TinyNet(3, 3))
    task = ReconstructionTask(model={"_target_": TINY, "in_channels": 3, "out_channels": 3})
    assert task.hparams.model == {"_target_": TINY, "in_channels": 3, "out_channels": 3}


def test_loss_ce_with_a_plugin_takes_its_output_as_the_logits_at_stride_1():
    spec = {"_target_": TINY, "in_channels": 1, "out_channels": bin_count()}
    with pytest.raises(AelabError, match=re.escape("task.ce_stride=1")):
        ColorizationTask(model=spec, loss="ce")  # ce_stride=4 leaves out upsamplings it lacks
    task = ColorizationTask(model=spec, loss="ce", ce_stride=1)
    assert task(torch.zeros(2, 1, 32, 32)).shape == (2, bin_count(), 32, 32)


def test_a_plugin_runs_untiled_and_refuses_larger_images_by_name():
    tiling = tiling_for(build_network({"_target_": TINY, "in_channels": 3, "out_channels": 3}), 1)
    tiling.refuse_oversize(1000, 1024, "small.png")
    with pytest.raises(AelabError, match=re.escape("big.png is 2000×10 pixels")):
        tiling.refuse_oversize(10, 2000, "big.png")
    assert [len(band) for band in tiling.rows(1000, 1024)] == [1]  # the whole image, one tile


@pytest.fixture(scope="module")
def plugin_run(tmp_path_factory) -> Path:
    """A smoke run of TinyNet, reconstruction, trained through the CLI once for the module."""
    tmp = tmp_path_factory.mktemp("plugin")
    write_images(tmp / "images" / "train" / "a", 60)
    write_images(tmp / "images" / "test" / "a", 20, seed=1)
    result = run_cli(
        *("debug=smoke", "data=folder", f"data.root={tmp / 'images'}", "data.subset=null"),
        *(f"paths.cache_dir={tmp / 'cache'}", "trainer.accelerator=cpu", "~local", *PLUGIN),
        f"hydra.run.dir={tmp / 'run'}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp / "run"


@pytest.mark.slow
def test_a_plugin_run_records_its_network_and_code(plugin_run):
    metrics = json.loads((plugin_run / "metrics.json").read_text())
    assert metrics["model"]["_target_"] == TINY and metrics["model"]["width"] == 8
    assert metrics["model"]["latent_size"] == 1024
    assert "Model: latent 4×16×16 = 1,024 values" in (plugin_run / "train.log").read_text()
    with trusting(["tests.plugins"]):
        checkpoint = read_checkpoint(plugin_run / "checkpoints" / "best.ckpt")
    spec = {"_target_": TINY, "width": 8, "in_channels": 3, "out_channels": 3}
    assert checkpoint["aelab"]["model"] == checkpoint["hyper_parameters"]["model"] == spec


@pytest.mark.slow
def test_a_saved_plugin_run_is_refused_unless_its_module_is_named(plugin_run, tmp_path):
    checkpoint = plugin_run / "checkpoints" / "best.ckpt"
    for read in (
        lambda: load_run_config(plugin_run),
        lambda: read_checkpoint(checkpoint),
        lambda: ReconstructionTask.load_from_checkpoint(checkpoint),
    ):
        with pytest.raises(AelabError, match=re.escape("names 'tests.plugins.tiny_net.TinyNet'")):
            read()
        with trusting(["tests.plugins"]):
            read()
    loaded = ReconstructionTask.load_from_checkpoint(checkpoint, trusted_modules=["tests.plugins"])
    assert isinstance(loaded.model, TinyNet) and isinstance(loaded.hparams.model["width"], int)
    # Trust is the command line's: the saved config's own trusted_modules is never read for it.
    stopped = shutil.copytree(
        plugin_run, tmp_path / "run", ignore=shutil.ignore_patterns(".aelab.lock")
    )
    (stopped / "metrics.json").write_text(json.dumps({"status": "interrupted"}))
    config = stopped / ".hydra" / "config.yaml"
    config.write_text(config.read_text().replace("trusted_modules: []", "trusted_modules: [tests]"))
    with pytest.raises(AelabError, match=re.escape("names 'tests.plugins.tiny_net.TinyNet'")):
        resume_arguments([f"resume={stopped}"])
    assert "++trusted_modules=[tests.plugins]" in resume_arguments([f"resume={stopped}", TRUST])
    with pytest.raises(AelabError, match="takes no other arguments"):
        resume_arguments([f"resume={stopped}", "seed=1"])


@pytest.mark.slow
def test_a_plugin_run_is_evaluated_resumed_and_reconstructed(plugin_run, tmp_path):
    checkpoint = plugin_run / "checkpoints" / "best.ckpt"
    eval_dir = tmp_path / "eval"
    assert run_entry(eval_main, f"ckpt_path={checkpoint}", f"hydra.run.dir={eval_dir}") == 2
    sys.argv, argv = (
        ["eval.py", f"ckpt_path={checkpoint}", f"hydra.run.dir={eval_dir}", TRUST],
        sys.argv,
    )
    try:
        eval_main()  # returns: no SystemExit
    finally:
        sys.argv = argv
    evaluated = json.loads((eval_dir / "eval.json").read_text())["metrics"]["psnr"]
    assert evaluated == json.loads((plugin_run / "metrics.json").read_text())["test"]["psnr"]

    photo = tmp_path / "photo"
    write_images(photo, 1, size=(37, 45))  # odd sides: padded to TinyNet's size_multiple
    args = [str(photo / "0000.png"), "--ckpt", str(checkpoint), "--out-dir", str(tmp_path / "out")]
    assert predict_cli.main("reconstruction", args) == 2
    assert predict_cli.main("reconstruction", [*args, "--trust", "tests.plugins"]) == 0
    assert (tmp_path / "out" / "0000.png").is_file()
    assert report_main([str(plugin_run), "--trust", "tests.plugins"]) == 0

    stopped = shutil.copytree(
        plugin_run, tmp_path / "run", ignore=shutil.ignore_patterns(".aelab.lock")
    )
    (stopped / "metrics.json").write_text(json.dumps({"status": "interrupted"}))
    resumed = run_cli(f"resume={stopped}", TRUST)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((stopped / "metrics.json").read_text())["status"] == "completed"


def smoke_on_plugin_data(plugin_run: Path) -> list[str]:
    data = OmegaConf.load(plugin_run / ".hydra" / "config.yaml").data
    return [
        *("debug=smoke", "data=folder", f"data.root={data.root}", "data.subset=null"),
        *(f"paths.cache_dir={data.cache_dir}", "trainer.accelerator=cpu", "~local"),
    ]


@pytest.mark.slow
@pytest.mark.parametrize(("start", "epochs"), [("init_weights", 1), ("ckpt_path", 3)])
def test_a_new_run_starts_from_a_plugin_checkpoint(plugin_run, tmp_path, start, epochs):
    """The new run's own config names the network: its module is trusted without being named."""
    last = plugin_run / "checkpoints" / "last.ckpt"
    result = run_cli(
        *smoke_on_plugin_data(plugin_run), *PLUGIN, f"trainer.max_epochs={epochs}",
        f"{start}={last}", f"hydra.run.dir={tmp_path / 'run'}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    key = "init_checkpoint" if start == "init_weights" else "continued_checkpoint"
    assert metrics[key] == str(last) and metrics["model"]["_target_"] == TINY


@pytest.mark.slow
def test_a_seed_run_does_not_read_a_plugin_checkpoint(plugin_run, tmp_path):
    """A config that names the seed network trusts no other module: the checkpoint is refused."""
    result = run_cli(
        *smoke_on_plugin_data(plugin_run), f"init_weights={plugin_run / 'checkpoints' / 'last.ckpt'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )  # fmt: skip
    assert result.returncode == 2 and "names 'tests.plugins.tiny_net.TinyNet'" in result.stderr


@pytest.mark.slow
def test_a_colorization_plugin_with_loss_ce_is_colorized(tmp_path):
    write_images(tmp_path / "images" / "train" / "a", 60)
    write_images(tmp_path / "images" / "test" / "a", 20, seed=1)
    result = run_cli(
        *("debug=smoke", "data=folder", f"data.root={tmp_path / 'images'}", "data.subset=null"),
        *(f"paths.cache_dir={tmp_path / 'cache'}", "trainer.accelerator=cpu", "~local", *PLUGIN),
        *("task=colorization", "loss=ce", "task.ce_stride=1", "trainer.max_epochs=1"),
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = tmp_path / "run" / "checkpoints" / "best.ckpt"
    loaded = ColorizationTask.load_from_checkpoint(checkpoint, trusted_modules=["tests.plugins"])
    assert loaded.hparams.ce_stride == 1 and isinstance(loaded.model, TinyNet)
    photo = tmp_path / "images" / "test" / "a" / "0000.png"
    args = [str(photo), "--ckpt", str(checkpoint), "--out-dir", str(tmp_path / "out")]
    assert predict_cli.main("colorization", [*args, "--trust", "tests.plugins"]) == 0
    assert (tmp_path / "out" / "0000.png").is_file()


def test_network_spec_of_the_seed_network_is_its_config():
    network = built()
    assert network_spec(network) == {**SEED_NODE, "in_channels": 3, "out_channels": 3}


def test_the_network_on_the_docs_page_is_the_one_tested():
    page = (REPO / "docs" / "custom_network.md").read_text()
    shown = page.split("```python\n", 1)[1].split("```", 1)[0]
    source = (REPO / "tests" / "plugins" / "tiny_net.py").read_text()
    assert source.endswith(shown) and len(shown.splitlines()) <= 30


def test_a_resumed_sweep_passes_the_command_lines_trust_to_its_jobs(tmp_path, monkeypatch):
    from aelab.runtime import resume

    given = {}
    monkeypatch.setattr(resume, "is_sweep_dir", lambda path: True)
    monkeypatch.setattr(
        resume, "continue_sweep", lambda *args: given.setdefault("args", args) and 0
    )
    with pytest.raises(SystemExit):
        resume_arguments([f"resume={tmp_path}", TRUST])
    assert given["args"][2] == "++trusted_modules=[tests.plugins]"
