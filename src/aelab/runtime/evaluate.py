"""`python eval.py ckpt_path=RUN/checkpoints/best.ckpt`: a run's checkpoint tested again with the
run's own config (or on other data), its results in a new eval dir; RUN's files are only read.

Without data settings the run's own data is scored (aelab.data.identity: read from where the run
read it, refused when it changed); data.KEY=VALUE scores other data, and eval.json says so.

aelab.runtime.cli imports this module only once the command line has been parsed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from aelab.choices import EVAL_SPLITS
from aelab.config.trusted import trusting
from aelab.data import identity
from aelab.data.batch_limits import check_every_loop_gets_a_batch
from aelab.errors import AelabError
from aelab.models.checkpoint import load_network, read_checkpoint
from aelab.models.network import network_spec, spec_differences
from aelab.runtime.lifecycle import guarded
from aelab.runtime.precision import warn_if_bf16_is_emulated
from aelab.runtime.run_config import checkpoint_run_dir, load_run_config
from aelab.runtime.train import build

log = logging.getLogger("aelab")

# split= → the Trainer method that scores it
TRAINER_METHODS = dict(zip(EVAL_SPLITS, ("test", "validate"), strict=True))


def run(cfg: DictConfig) -> None:
    """What `python eval.py` does with its config."""
    guarded(evaluate, cfg)


def evaluate(cfg: DictConfig, output_dir: Path) -> dict:
    """Score the checkpoint on the split and write eval.json into output_dir; returns its contents.
    A run of your own network is built when you name its module: trusted_modules=[my_pkg]."""
    with trusting(cfg.get("trusted_modules") or ()):
        return evaluate_trusting(cfg, output_dir)


def evaluate_trusting(cfg: DictConfig, output_dir: Path) -> dict:
    split = cfg.split  # one of EVAL_SPLITS (aelab.config.schema)
    if OmegaConf.is_missing(cfg, "ckpt_path") or not cfg.ckpt_path:
        raise AelabError(
            "eval.py needs the checkpoint to test: python eval.py "
            "ckpt_path=outputs/runs/<run>/checkpoints/best.ckpt"
        )
    checkpoint = Path(cfg.ckpt_path).expanduser().resolve()
    read_checkpoint(checkpoint)  # a missing file or a non-checkpoint is explained before any build
    run_dir = checkpoint_run_dir(
        checkpoint, "eval.py rebuilds the model and data from its run's config"
    )
    run_cfg = evaluation_config(cfg, run_dir, output_dir)

    L.seed_everything(run_cfg.seed, workers=True)
    task, datamodule = build(run_cfg)
    network = load_network(checkpoint, task.name)
    differs = spec_differences(network_spec(network), network_spec(task.model))
    if differs:
        raise AelabError(
            f"{checkpoint} holds a network with other settings than its run's config builds "
            f"({differs}); was it copied in from another run?"
        )
    task.model.load_state_dict(network.state_dict())
    data = identity.evaluation_data(datamodule, run_dir, given=given_data(cfg))

    trainer = evaluation_trainer(run_cfg)
    warn_if_bf16_is_emulated(trainer)  # a bf16 run's config scored on another machine
    check_every_loop_gets_a_batch(trainer, datamodule, scored=split)  # before Lightning's refusal
    (scores,) = getattr(trainer, TRAINER_METHODS[split])(task, datamodule=datamodule)
    results = {
        "task": task.name,
        "split": split,
        "metrics": {key.removeprefix(f"{split}/"): value for key, value in sorted(scores.items())},
        "split_size": datamodule.split_sizes()[split],  # images in the split
        "temperature": run_cfg.task.get("temperature")
        if run_cfg.task.get("loss") == "ce"
        else None,
        "checkpoint": str(checkpoint),
        "run_dir": str(run_dir),
        "data": {**OmegaConf.to_container(run_cfg.data, resolve=True), "root": datamodule.root},
        **data,
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "eval.json").write_text(json.dumps(results, indent=2) + "\n")
    scored = ", ".join(f"{key} {value:.4f}" for key, value in results["metrics"].items())
    log.info("%s: %s", split.capitalize(), scored)
    log.info("Eval dir: %s", output_dir)
    return results


def evaluation_config(cfg: DictConfig, run_dir: Path, output_dir: Path) -> DictConfig:
    """The run's config, with what eval.py's command line chose laid over it."""
    run_cfg = load_run_config(run_dir, output_dir)
    with open_dict(run_cfg):
        for key in ("data_dir", "cache_dir"):
            if cfg.paths.get(key) is not None:
                run_cfg.paths[key] = cfg.paths[key]
        for key, value in given_data(cfg).items():
            here = key == "root" and isinstance(value, str) and value  # relative: to this dir
            run_cfg.data[key] = str(Path(value).expanduser().resolve()) if here else value
        for key, value in OmegaConf.to_container(cfg.trainer).items():
            if value is not None:
                run_cfg.trainer[key] = value
        if cfg.get("temperature") is not None:
            if run_cfg.task.get("loss") != "ce":
                raise AelabError(
                    f"temperature={cfg.temperature}: only a loss=ce colorization run decodes "
                    f"with a temperature, and {run_dir} was trained with "
                    f"task {run_cfg.task._target_.rsplit('.', 1)[-1]}, loss="
                    f"{run_cfg.task.get('loss')}. Leave temperature out for this run."
                )
            run_cfg.task.temperature = cfg.temperature
    return run_cfg


def given_data(cfg: DictConfig) -> dict:
    """The data settings eval.py's command line gave (data.KEY=VALUE); the others stay ???."""
    data = cfg.get("data") or {}
    if "_target_" in data:  # +data=OPTION: a preset would reset the split settings to its own
        raise AelabError(
            "eval.py takes the run's data settings and changes only those given as data.KEY=VALUE, "
            "not a data=OPTION preset (it would reset the image size, split, split seed and subset "
            "to the preset's): give data.root=PATH for other images, and data.source=folder or "
            "cifar10 to read another kind of source."
        )
    return {key: data[key] for key in data if not OmegaConf.is_missing(data, key)}


def evaluation_trainer(run_cfg: DictConfig) -> L.Trainer:
    """The run's Trainer settings on one device, writing nothing: no logger, no checkpoints."""
    progress_bar = (run_cfg.get("callbacks") or {}).get("progress_bar")
    show_progress = progress_bar is not None and run_cfg.trainer.get("enable_progress_bar", True)
    return instantiate(
        run_cfg.trainer,
        devices=1,
        num_nodes=1,
        strategy="auto",
        logger=False,
        enable_checkpointing=False,
        callbacks=[instantiate(progress_bar)] if show_progress else [],
    )
