"""A run's config is data, never code (aelab.config.trusted): whatever a run dir's saved config or
a checkpoint names, eval.py, resume=, ckpt_path=, load_from_checkpoint, the scripts and the report
build only classes aelab names, and refuse anything else by name before anything is built."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from aelab import CONFIG_DIR
from aelab.analysis import predict_cli
from aelab.analysis.report import main as report_main
from aelab.analysis.runs import read_run
from aelab.config.trusted import refuse_untrusted, untrusted_because
from aelab.errors import AelabError
from aelab.models.checkpoint import load_network, read_checkpoint
from aelab.runtime.evaluate import run as run_eval
from aelab.runtime.resume import resume_arguments
from aelab.runtime.run_config import load_run_config
from aelab.tasks import ColorizationTask, ReconstructionTask
from tests.conftest import CLEAN_ENVIRONMENT, REPO, compose_config, run_cli, write_images


def opens(marker: Path) -> dict:
    """A node that, were it built, would create (or empty) the file `marker`."""
    return {"_target_": "builtins.open", "_args_": [str(marker), "w"]}


# (key, what a foreign config puts there, the name its refusal must give, where); M: the marker.
# A node nested in a trusted class's arguments is built before that class is called.
SAVED_CONFIG_ATTACKS = {
    "optimizer": ("optimizer", lambda m: opens(m), "builtins.open", "optimizer._target_"),
    "torch.save reached through torch.optim": (
        "optimizer",
        lambda m: {"_target_": "torch.optim.optimizer.torch.save", "_args_": ["x", str(m)]},
        "torch.optim.optimizer.torch.save",
        "optimizer._target_",
    ),
    "scheduler": (
        "scheduler",
        lambda m: {"scheduler": {**opens(m), "_partial_": True}, "interval": "epoch"},
        "builtins.open",
        "scheduler.scheduler._target_",
    ),
    "scheduler argument": (
        "scheduler",
        lambda m: {
            "scheduler": {"_target_": "torch.optim.lr_scheduler.StepLR", "step_size": opens(m)}
        },
        "builtins.open",
        "scheduler.scheduler.step_size._target_",
    ),
    "model: a class of logging reached through aelab": (
        "model",
        lambda m: {
            "_target_": "aelab.models.ConvAutoEncoder",
            "activation": {
                "_target_": "aelab.runtime.train.logging.FileHandler",
                "_args_": [str(m)],
            },
        },
        "aelab.runtime.train.logging.FileHandler",
        "model.activation._target_",
    ),
    "data: a function of shutil reached through aelab": (
        "data",
        lambda m: {
            "_target_": "aelab.data.ImageDataModule",
            "root": {"_target_": "aelab.config.shutil.copyfile", "_args_": [__file__, str(m)]},
        },
        "aelab.config.shutil.copyfile",
        "data.root._target_",
    ),
    "task": (
        "task",
        lambda m: {"_target_": "aelab.tasks.ReconstructionTask", "channels_last": opens(m)},
        "builtins.open",
        "task.channels_last._target_",
    ),
    "trainer": ("trainer", lambda m: opens(m), "builtins.open", "trainer._target_"),
    "trainer argument in a list": (
        "trainer",
        lambda m: {"_target_": "lightning.Trainer", "plugins": [opens(m)]},
        "builtins.open",
        "trainer.plugins[0]._target_",
    ),
    "logger": (
        "logger",
        lambda m: {"tensorboard": opens(m)},
        "builtins.open",
        "logger.tensorboard._target_",
    ),
    "callback": (
        "callbacks",
        lambda m: {"preview": opens(m)},
        "builtins.open",
        "callbacks.preview._target_",
    ),
    "nested _args_": (
        "optimizer",
        lambda m: {"_target_": "torch.optim.Adam", "_partial_": True, "_args_": [opens(m)]},
        "builtins.open",
        "optimizer._args_[0]._target_",
    ),
    "a node a resolver makes": (
        "callbacks",
        lambda m: {"extra": f"${{oc.create:{{_target_: builtins.open, _args_: [{m}, w]}}}}"},
        "builtins.open",
        "callbacks.extra._target_",
    ),
    "an interpolated target": (
        "model",
        lambda m: {"_target_": "${oc.env:AELAB_TEST_TARGET,builtins.open}"},
        "is an interpolation",
        "model._target_",
    ),
    "a hydra: key": ("hydra", lambda m: {"callbacks": {"x": opens(m)}}, "'hydra:' key", ""),
    "a defaults: key": ("defaults", lambda m: ["_self_"], "'defaults:' key", ""),
}


@pytest.fixture
def genuine(trained, tmp_path) -> Path:
    """A copy of a real smoke run's dir, stopped before its end (so that resume= would continue)."""
    run_dir = shutil.copytree(
        trained("reconstruction"), tmp_path / "run", ignore=shutil.ignore_patterns(".aelab.lock")
    )
    (run_dir / "metrics.json").write_text(json.dumps({"status": "interrupted"}))
    return run_dir


def attack(run_dir: Path, name: str, marker: Path) -> str:
    """Edit run_dir's saved config as a foreign run's could be; the text its refusal must name."""
    key, node, named, _ = SAVED_CONFIG_ATTACKS[name]
    path = run_dir / ".hydra" / "config.yaml"
    config = yaml.safe_load(path.read_text())
    config[key] = node(marker)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return named


def eval_config(checkpoint: Path, eval_dir: Path):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("eval", overrides=[f"ckpt_path={checkpoint}"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(eval_dir)
    return cfg


@pytest.mark.slow
@pytest.mark.parametrize("name", SAVED_CONFIG_ATTACKS)
def test_a_foreign_saved_config_builds_nothing_at_any_entry_point(name, genuine, tmp_path, capsys):
    marker = tmp_path / "marker"
    must_say = [attack(genuine, name, marker), SAVED_CONFIG_ATTACKS[name][3]]

    with pytest.raises(SystemExit) as stop:  # eval.py
        run_eval(eval_config(genuine / "checkpoints" / "best.ckpt", tmp_path / "eval"))
    error = capsys.readouterr().err
    assert stop.value.code == 2 and all(text in error for text in must_say), error[-2000:]

    with pytest.raises(AelabError) as refused:  # train.py resume=, before Hydra starts
        resume_arguments([f"resume={genuine}"])
    assert all(text in str(refused.value) for text in must_say)

    run = read_run(genuine, "run")  # report.py and showcase.py: listed, never built or imported
    assert (run.status, run.config) == ("unreadable", None)
    assert all(text in run.detail for text in must_say)

    with pytest.raises(AelabError) as refused:  # a notebook's load_run_config
        load_run_config(genuine)
    assert all(text in str(refused.value) for text in must_say)
    assert not marker.exists()


def alias_bomb() -> str:
    """500 bytes of YAML that a loader expands to 10⁹ values."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    return "\n".join(lines) + "\n"


def package_header(marker: Path) -> str:
    """`# @package hydra` makes the file Hydra's settings on resume=: its logging config runs any
    callable, without one _target_."""
    handler = {"()": "builtins.open", "file": str(marker), "mode": "w"}
    logging_ = {"version": 1, "handlers": {"x": handler}, "root": {"handlers": ["x"]}}
    return "# @package hydra\n" + yaml.safe_dump({"job_logging": logging_})


@pytest.mark.slow
@pytest.mark.parametrize(
    ("text", "message"),
    [(package_header, "header directive"), (lambda marker: alias_bomb(), "YAML aliases")],
)
def test_a_saved_config_file_hydra_would_misread_is_refused_unread(
    text, message, genuine, tmp_path
):
    marker = tmp_path / "marker"
    (genuine / ".hydra" / "config.yaml").write_text(text(marker))
    result = run_cli(f"resume={genuine}", timeout=60)  # refused before torch loads, in a second
    assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    with pytest.raises(AelabError, match=message):
        load_run_config(genuine)  # eval.py, the notebook
    assert message in read_run(genuine, "run").detail  # the report
    assert not marker.exists()


@pytest.mark.slow
def test_the_command_lines_exit_2_naming_the_target(genuine, tmp_path):
    marker = tmp_path / "marker"
    attack(genuine, "optimizer", marker)
    checkpoint, eval_dir = genuine / "checkpoints" / "best.ckpt", tmp_path / "eval"
    evaluated = subprocess.run(
        [
            sys.executable,
            str(REPO / "eval.py"),
            f"ckpt_path={checkpoint}",
            f"hydra.run.dir={eval_dir}",
        ],
        capture_output=True,
        text=True,
        env=CLEAN_ENVIRONMENT,
        timeout=300,
    )
    resumed = run_cli(f"resume={genuine}")
    for result in (evaluated, resumed):
        assert result.returncode == 2, result.stderr[-2000:]
        assert "optimizer._target_ names 'builtins.open'" in result.stderr
        assert "Traceback" not in result.stderr
    assert report_main([str(genuine)]) == 0  # the report lists it as unreadable, with the name
    assert "optimizer._target_ names 'builtins.open'" in (genuine / "report.md").read_text()
    assert not marker.exists()


# (the part of the checkpoint, how a foreign one differs, what the refusal must say)
CHECKPOINT_ATTACKS = {
    "hyperparameter model": (
        "hyper_parameters",
        lambda part: {**part, "model": {**part["model"], "_target_": "builtins.open"}},
        "(hyper_parameters): model._target_ names 'builtins.open'",
    ),
    "Lightning's instantiator": (
        "hyper_parameters",
        lambda part: {**part, "_instantiator": "lightning.pytorch.cli.instantiate_module"},
        "_instantiator names 'lightning.pytorch.cli.instantiate_module', which lies outside",
    ),
    "aelab facts": (
        "aelab",
        lambda part: {
            **part,
            "model": {**part["model"], "_target_": "aelab.runtime.train.os.system"},
        },
        "(aelab): model._target_ names 'aelab.runtime.train.os.system'",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", CHECKPOINT_ATTACKS)
def test_a_foreign_checkpoint_builds_nothing_at_any_entry_point(name, genuine, tmp_path, capsys):
    part, edit, message = CHECKPOINT_ATTACKS[name]
    path = genuine / "checkpoints" / "best.ckpt"
    checkpoint = torch.load(path, weights_only=True)
    checkpoint[part] = edit(checkpoint[part])
    torch.save(checkpoint, path)
    image = tmp_path / "in" / "0000.png"
    write_images(image.parent, 1)

    with pytest.raises(AelabError, match=re.escape(message)):  # train.py init_weights=
        load_network(path, "reconstruction")
    for task_class in (ReconstructionTask, ColorizationTask):
        with pytest.raises(AelabError, match=re.escape(message)):
            task_class.load_from_checkpoint(path)
    for task in ("reconstruction", "colorization"):  # scripts/reconstruct.py, colorize.py
        argv = ["--ckpt", str(path), str(image), "--out-dir", str(tmp_path / "out")]
        assert predict_cli.main(task, argv) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:  # eval.py
        run_eval(eval_config(path, tmp_path / "eval"))
    assert stop.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize("key", ["ckpt_path", "init_weights"])
def test_train_exits_2_for_a_foreign_checkpoint(key, genuine, image_folder, tmp_path):
    path = genuine / "checkpoints" / "best.ckpt"
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["hyper_parameters"]["optimizer"] = opens(tmp_path / "marker")
    torch.save(checkpoint, path)
    result = run_cli(
        "debug=smoke",
        "data=folder",
        f"data.root={image_folder}",
        f"{key}={path}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={tmp_path / 'new'}",
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "(hyper_parameters): optimizer._target_ names 'builtins.open'" in result.stderr
    assert not (tmp_path / "marker").exists()


@pytest.mark.slow
def test_a_genuine_run_passes_every_reader(genuine, tmp_path):
    """No false refusal: the smoke run's own config and checkpoint are read everywhere, and so is
    text from Hydra's facts about a run, which resolves only inside Hydra."""
    config = genuine / ".hydra" / "config.yaml"
    config.write_text(config.read_text() + "tag: ${hydra:job.override_dirname}_${now:%H}\n")
    cfg = load_run_config(genuine)
    assert cfg.optimizer._target_ == "torch.optim.Adam"
    assert resume_arguments([f"resume={genuine}"])[-1] == f"++resume='{genuine}'"
    assert read_run(genuine, "run").config is not None
    checkpoint = genuine / "checkpoints" / "best.ckpt"
    assert read_checkpoint(checkpoint)["aelab"]["task"] == "reconstruction"
    network = load_network(checkpoint, "reconstruction")
    loaded = ReconstructionTask.load_from_checkpoint(checkpoint)
    assert loaded.model.config() == network.config()
    with pytest.raises(AelabError, match="weights_only=True"):
        ReconstructionTask.load_from_checkpoint(checkpoint, weights_only=False)


GROUPS = ("task", "loss", "optimizer", "scheduler", "logger", "trainer", "data", "experiment")
OPTIONS = [f"{g}={path.stem}" for g in GROUPS for path in sorted((CONFIG_DIR / g).glob("*.yaml"))]


@pytest.mark.parametrize("option", OPTIONS)
def test_every_config_aelab_ships_is_trusted(option, tmp_path):
    """No false refusal: every class that any option of aelab's config groups names passes."""
    data = [option] if option.startswith("data=") else ["data=folder", option]
    folder = [] if option == "data=cifar10" else ["data.root=/images"]
    refuse_untrusted(compose_config([*data, *folder], tmp_path), "composed")


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("aelab.runtime.train.os.system", "is a builtin_function_or_method, not a class"),
        ("torch.optim.optimizer.torch.save", "is a function, not a class"),
        ("aelab.tasks.base.MeanMetric", "is a class of torchmetrics"),
        ("aelab.runtime.train.Path", "is a class of pathlib"),
        ("lightning.pytorch.trainer.trainer.os", "is a module, not a class"),
        ("torch.save", "lies outside"),
        ("aelab.no_such_module.X", "cannot be imported"),
        ("../x", "is not a dotted class name"),
        (["aelab.tasks.ReconstructionTask"], "is not a dotted class name"),
    ],
)
def test_a_name_counts_for_what_it_resolves_to(name, reason):
    assert reason in untrusted_because(name)


@pytest.mark.parametrize(
    "name",
    [
        "lightning.Trainer",
        "lightning.pytorch.Trainer",
        "torch.optim.lr_scheduler.OneCycleLR",
        "lightning.pytorch.callbacks.TQDMProgressBar",
        "aelab.runtime.train.TensorBoardLogger",
    ],
)
def test_trusted_classes_under_any_of_their_names(name):
    assert untrusted_because(name) is None


def test_a_module_outside_the_trusted_ones_is_never_imported(tmp_path, monkeypatch):
    marker = tmp_path / "marker"
    (tmp_path / "foreign_module.py").write_text(f"open({str(marker)!r}, 'w')\nclass X: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "lies outside" in untrusted_because("foreign_module.X")
    assert not marker.exists() and "foreign_module" not in sys.modules


def test_a_reference_loop_or_an_expansion_bomb_is_refused_quickly():
    loop = OmegaConf.create({"a": {"b": "${c}"}, "c": {"d": "${a}"}})
    with pytest.raises(AelabError, match="a loop of references"):
        refuse_untrusted(loop, "loop")
    bomb = {"l0": [{"x": 1}, {"x": 1}]}
    for level in range(1, 30):
        bomb[f"l{level}"] = [f"${{l{level - 1}}}", f"${{l{level - 1}}}"]
    with pytest.raises(AelabError, match="a loop of references"):
        refuse_untrusted(OmegaConf.create(bomb), "bomb")
