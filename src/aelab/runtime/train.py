"""One training run: seed → build → fit → test → write results.

Everything is instantiated here and in evaluate; the other modules never read the config.
aelab.runtime.cli imports this module only once the command line has been parsed, so
`python train.py --help` does not wait for torch and Lightning.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from aelab import mlflow_run
from aelab.callbacks import (
    CheckpointPathsInRunDir,
    EpochTimer,
    FlushLogsWithCheckpoints,
    RandomStates,
)
from aelab.callbacks.checkpoint_extras import keep_csv_rows
from aelab.config.trusted import trusting
from aelab.data import identity
from aelab.data.batch_limits import check_every_loop_gets_a_batch
from aelab.errors import AelabError
from aelab.history import EpochHistory, EpochLearningRate
from aelab.models import ConvAutoEncoder
from aelab.models.checkpoint import network_of, read_checkpoint
from aelab.models.network import (
    build_network,
    check_output_size,
    network_facts,
    network_spec,
    spec_differences,
)
from aelab.runtime import continuation
from aelab.runtime.checkpoint_io import AtomicCheckpointIO
from aelab.runtime.distributed import launch_rank
from aelab.runtime.lifecycle import guarded, training_process, write_status
from aelab.runtime.precision import warn_if_bf16_is_emulated
from aelab.runtime.requeue import continues_requeued_run

log = logging.getLogger("aelab")
PATH_KEYS = ("dirpath", "save_dir", "output_dir")  # where a callback or logger writes files
INIT_WEIGHTS_ADVICE = (
    "Use the overrides the checkpoint's run was trained with (its .hydra/overrides.yaml)."
)
CONTINUE_ADVICE = (
    "ckpt_path= continues that run's training, so its network must be the one this config "
    "builds: use the overrides the checkpoint's run was trained with (its .hydra/overrides.yaml)."
)
RESUME_ADVICE = (
    "Its .hydra/config.yaml was changed after the run started: put back the values it was "
    "trained with. A resumed run keeps its config; other settings need a new run (init_weights=)."
)


def run(cfg: DictConfig) -> float | None:
    """What `python train.py` does with its config."""
    return guarded(train, cfg, resumable=True)


def train(cfg: DictConfig, output_dir: Path) -> float | None:
    with trusting(user_trusted_modules(cfg)):
        return train_trusting(cfg, output_dir)


def user_trusted_modules(cfg: DictConfig) -> list[str]:
    """The modules the user trusts for this run: trusted_modules (a resumed run's comes from the
    resume command line, aelab.runtime.resume), and a new run's own network's module, which the
    user's config names (so init_weights= and ckpt_path= read its checkpoints)."""
    modules = list(cfg.get("trusted_modules") or ())
    target = OmegaConf.select(cfg, "model._target_")
    if not cfg.get("resume") and isinstance(target, str) and "." in target:
        modules.append(target.rpartition(".")[0])
    return modules


def train_trusting(cfg: DictConfig, output_dir: Path) -> float | None:
    refuse_files_outside(cfg, output_dir)
    resume_from = resume_checkpoint(cfg, output_dir)
    continued = continuation.checkpoint_to_continue(cfg) if not resume_from else None
    L.seed_everything(cfg.seed, workers=True)
    task, datamodule = build(cfg)
    if resume_from:  # every rank reads the images the run started on, from any working dir
        refuse_other_network(resume_from, task, RESUME_ADVICE)
        identity.use_run_data(datamodule, output_dir)
    elif continued:
        path, checkpoint = continued
        refuse_other_network(path, task, CONTINUE_ADVICE, checkpoint)
        continuation.announce(path, checkpoint)
    elif cfg.get("init_weights"):
        start_from_weights(task, cfg.init_weights)
    owner = launch_rank() == 0  # rank zero writes the run's files; other ranks only train
    if owner:  # data errors surface here, before a logger or checkpoint exists
        datamodule.prepare_data()
        datamodule.setup("fit")
        if continued:
            continuation.check_data(continued[0], datamodule)
        output_dir.mkdir(parents=True, exist_ok=True)
        identity.record_or_check(output_dir, datamodule, resuming=bool(resume_from))
        write_status(output_dir, "running", pid=os.getpid(), host=socket.gethostname())

    size = datamodule.image_size
    model_facts = network_facts(task.model, size, target=task.target_phrase(size))
    log.info("Model: %s; %s parameters", model_facts["summary"], f"{model_facts['parameters']:,}")
    trainer, loggers = build_trainer(cfg, bool(resume_from))
    warn_if_bf16_is_emulated(trainer)
    check_every_loop_gets_a_batch(trainer, datamodule)  # before fit: a limit that rounds to 0
    if owner:
        params = OmegaConf.to_container(cfg, resolve=True)
        mlflow_run.open_runs(logger_nodes(cfg), loggers, output_dir, params)
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger) and owner and not resume_from:
            logger.experiment.add_text("model/bottleneck", model_facts["summary"])

    with training_process(trainer, output_dir, bool(resume_from), cfg.get("threads")):
        fit_from = resume_from or (continued[0] if continued else None)  # the full state
        trainer.fit(task, datamodule=datamodule, ckpt_path=fit_from, weights_only=True)
        timing = epoch_timing(trainer)  # now: testing the best checkpoint restores its timer
        optimized = trainer.callback_metrics.get(optimized_metric(cfg))
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        (test_metrics,) = trainer.test(task, datamodule=datamodule, ckpt_path=best or None)

    if trainer.is_global_zero:  # rank zero writes the results
        scores = (test_metrics, best, model_facts, timing)
        write_results(cfg, output_dir, trainer, task, datamodule, *scores)
    return float(optimized) if optimized is not None else None


def optimized_metric(cfg: DictConfig) -> str:
    """What the run returns to Hydra's sweeper: its last value of optimized_metric (a config saved
    before the setting existed returned val/psnr)."""
    return cfg.get("optimized_metric") or "val/psnr"


def build(cfg: DictConfig) -> tuple[L.LightningModule, L.LightningDataModule]:
    """The task (with its network) and the data, from the config; no file is written."""
    refuse_fused_with_foreach(cfg.optimizer)  # the settings are checked (aelab.config)
    task_class = get_class(cfg.task._target_)
    out_channels = task_class.output_channels(cfg.task.get("loss", "bce"))  # loss=ce: one per bin
    model = build_network(
        {
            **OmegaConf.to_container(cfg.model, resolve=True),
            "in_channels": task_class.in_channels,
            "out_channels": out_channels,
        }
    )
    datamodule = _instantiate(cfg.data, color_space=task_class.color_space)
    size = datamodule.image_size
    if isinstance(model, ConvAutoEncoder) and size % 2**model.pooling_stages:
        raise AelabError(
            f"A {size}×{size} image cannot pass {model.pooling_stages} 2×2 poolings and come back "
            f"at the same size: data.image_size must be a multiple of {2**model.pooling_stages}. "
            "Change the image size, use fewer model.widths, or pooling=none."
        )
    check_output_size(model, size)  # a plug-in's, measured
    scheduler = lr_scheduler(cfg.scheduler) if cfg.get("scheduler") else None
    task = _instantiate(
        cfg.task, model=model, optimizer=_instantiate(cfg.optimizer), scheduler=scheduler
    )
    return task, datamodule


def refuse_fused_with_foreach(node: DictConfig) -> None:
    """torch refuses the pair only once fit starts, when the partial optimizer is built."""
    if node.get("fused") and node.get("foreach"):
        raise AelabError(
            "optimizer.fused=true and optimizer.foreach=true cannot both be set; add "
            "~optimizer.foreach to use the fused kernel."
        )


def _instantiate(node: DictConfig, **kwargs):
    """Hydra's instantiate, but a user error inside a constructor surfaces as itself."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        if isinstance(error.__cause__, AelabError):
            raise error.__cause__ from None
        raise


def lr_scheduler(node: DictConfig) -> dict:
    """Lightning's lr_scheduler dict with a scheduler factory: from a preset (scheduler=cosine,
    the torch scheduler under scheduler.scheduler) or a bare torch scheduler node
    (+scheduler._target_=torch.optim.lr_scheduler.StepLR +scheduler.step_size=1: stepped per epoch)."""
    if "_target_" in node:
        return {"scheduler": _instantiate(node, _partial_=True)}
    if "scheduler" not in node:
        raise AelabError(
            "The scheduler config names no scheduler: give a preset (scheduler=cosine, onecycle, "
            "plateau, step) or a torch scheduler, e.g. +scheduler._target_="
            "torch.optim.lr_scheduler.StepLR +scheduler.step_size=1."
        )
    settings = OmegaConf.to_container(node, resolve=True)
    return {**settings, "scheduler": _instantiate(node.scheduler, _partial_=True)}


def resume_checkpoint(cfg: DictConfig, output_dir: Path) -> Path | None:
    """last.ckpt of this run dir when resuming (resume=, or a requeued SLURM job), else None: a
    run stopped before its first checkpoint starts again from the beginning."""
    last = output_dir / "checkpoints" / "last.ckpt"
    if not (cfg.get("resume") or continues_requeued_run(output_dir)):
        return None
    if not last.is_file():
        log.info("Starting again from the beginning: the run stopped before its first checkpoint")
        return None
    log.info("Resuming from %s", last)
    return last


def start_from_weights(task: L.LightningModule, path: str) -> None:
    """init_weights=PATH: a new run that starts from a checkpoint's network weights only (fresh
    optimizer, scheduler and epoch count), for fine-tuning or training longer."""
    network = refuse_other_network(path, task, INIT_WEIGHTS_ADVICE)
    task.model.load_state_dict(network.state_dict())
    log.info("Starting from the weights of %s (a new run: fresh optimizer state, epoch 0)", path)


def refuse_other_network(path, task: L.LightningModule, advice: str, checkpoint=None):
    """The checkpoint's network, refused before any state is loaded if its settings differ from
    the one this run's config builds (an edited config, a checkpoint of another run)."""
    network = network_of(checkpoint or read_checkpoint(path), path, task.name)
    differs = spec_differences(network_spec(network), network_spec(task.model))
    if differs:
        raise AelabError(
            f"{path} holds a network with other settings than this run's ({differs}). {advice}"
        )
    return network


def build_trainer(cfg: DictConfig, resumes: bool = False) -> tuple[L.Trainer, list]:
    """The Trainer with the configured loggers and callbacks, plus what every run needs (its
    history.jsonl, whatever the loggers); a resumed run's loggers go on with the curves logged
    before its stop."""
    run_dir = Path(cfg.paths.output_dir)
    loggers = [mlflow_run.build_logger(node, run_dir) for node in logger_nodes(cfg)]
    if resumes:
        keep_csv_rows(loggers)  # TensorBoard adds an event file beside the earlier ones itself
    callbacks = configured_callbacks(cfg)
    callbacks += [
        EpochTimer(),
        EpochLearningRate(),
        RandomStates(),
        FlushLogsWithCheckpoints(),
        CheckpointPathsInRunDir(),
    ]
    if cfg.get("scheduler") and loggers:
        callbacks.append(LearningRateMonitor())
    trainer = instantiate(
        cfg.trainer,
        logger=[*loggers, EpochHistory(run_dir)],  # last: trainer.logger stays the configured one
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
    )
    return trainer, loggers


def logger_nodes(cfg: DictConfig) -> list[DictConfig]:
    """The logger group's nodes, those set to null left out (logger.tensorboard=null)."""
    return [node for node in (cfg.get("logger") or {}).values() if node is not None]


def configured_callbacks(cfg: DictConfig) -> list[L.Callback]:
    """The callbacks node's callbacks; trainer.enable_progress_bar=false leaves its progress bar
    out, as Lightning refuses a progress bar callback beside that flag."""
    nodes = dict(cfg.callbacks or {})
    if not cfg.trainer.get("enable_progress_bar", True):
        nodes.pop("progress_bar", None)
    return [instantiate(node) for node in nodes.values() if node is not None]


def refuse_files_outside(cfg: DictConfig, output_dir: Path) -> None:
    """A run dir holds all of its run: checkpoints or logs configured elsewhere would be shared
    with other runs (and overwritten by them), and resume, eval.py and the report would not find
    them. Refused before the run starts."""
    run_dir = output_dir.resolve()
    groups = {"callbacks": cfg.get("callbacks") or {}, "logger": cfg.get("logger") or {}}
    for group, nodes in groups.items():
        for name, node in nodes.items():
            for key in PATH_KEYS:
                value = node.get(key) if isinstance(node, DictConfig) else None
                if value and not Path(value).expanduser().resolve().is_relative_to(run_dir):
                    raise AelabError(
                        f"{group}.{name}.{key}={value} is outside the run dir {run_dir}. A run "
                        "keeps its checkpoints and logs in its own dir, so that resume=, eval.py "
                        "and the report find them and no other run overwrites them: leave "
                        f"{group}.{name}.{key} at its default (under ${{paths.output_dir}}), and "
                        "choose where the whole run goes with hydra.run.dir=PATH instead."
                    )


def epoch_timing(trainer: L.Trainer) -> dict:
    """timing.json's contents: every trained epoch's seconds and training images/s."""
    timer = next(c for c in trainer.callbacks if isinstance(c, EpochTimer))
    return {
        "seconds_per_epoch": list(timer.epoch_seconds),
        "images_per_second": list(timer.images_per_second),
        "mean_seconds_per_epoch": sum(timer.epoch_seconds) / max(len(timer.epoch_seconds), 1),
        "torch_threads": torch.get_num_threads(),
    }


def write_results(
    cfg, output_dir, trainer, task, datamodule, test_metrics, best, model_facts, timing
):
    """metrics.json and timing.json in the run dir; the test metrics to the loggers."""
    results = {
        "status": "completed",
        "task": task.name,
        "loss": task.hparams.loss,
        "test": {key.removeprefix("test/"): value for key, value in sorted(test_metrics.items())},
        "model": {**network_spec(task.model), **model_facts},
        "data": datamodule.split_sizes(),
        "best_checkpoint": str(Path(best).relative_to(output_dir)) if best else None,
        "init_checkpoint": _resolved(cfg.get("init_weights")),  # the weights it started from
        "continued_checkpoint": _resolved(cfg.get("ckpt_path")),  # the state it continued
    }
    (output_dir / "timing.json").write_text(json.dumps(timing, indent=2) + "\n")
    text = json.dumps(results, indent=2) + "\n"
    params = OmegaConf.to_container(cfg, resolve=True)
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):  # its hparams view shows the test metrics
            logger.log_hyperparams(params, metrics=test_metrics)
        elif isinstance(logger, MLFlowLogger):  # params at its start; metrics.json as written next
            files = {"metrics.json": text, "preview.png": output_dir / "preview.png"}
            mlflow_run.log_files(logger, files)
        else:
            logger.log_hyperparams(params)
        logger.finalize("success")
    log.info("Test: %s", ", ".join(f"{k} {v:.4f}" for k, v in results["test"].items()))
    log.info("Run dir: %s", output_dir)
    # Last: until "completed" is written, a stop leaves the run interrupted and resumable.
    (output_dir / "metrics.json").write_text(text)


def _resolved(path) -> str | None:
    return str(Path(str(path)).expanduser().resolve()) if path else None
