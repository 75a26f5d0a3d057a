"""One run: check the config, build everything from it, fit, test, write results.

Everything is instantiated here and only here; the other modules never read the config.
aelab.cli holds the Hydra entry point and imports this module only once the command line has
been parsed, so `python train.py --help` does not wait for torch and Lightning.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import shutil
import socket
import sys
import warnings
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import get_class, instantiate
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from omegaconf import DictConfig, OmegaConf

from aelab.callbacks import EpochTimer
from aelab.distributed import export_run_to_children, launch_rank, launch_state_restored
from aelab.errors import AelabError
from aelab.heap import frozen_heap
from aelab.models import ConvAutoEncoder
from aelab.nvml import drop_check_without_nvml
from aelab.reliability import (
    AtomicCheckpointIO,
    FlushLogsWithCheckpoints,
    RandomStates,
    TrainingDiverged,
    TrainingInterrupted,
)
from aelab.requeue import continues_requeued_run, hand_over

log = logging.getLogger("aelab")

# Lightning looks for the mid-epoch position on the train DataLoader; aelab keeps it in
# ImageDataModule.state_dict (Lightning fetches a batch ahead, so only its own progress counter
# knows how many batches were trained on), so this warning about a mid-epoch resume is wrong here.
warnings.filterwarnings(
    "ignore", "You're resuming from a checkpoint that ended before the epoch", PossibleUserWarning
)
# With trainer.overfit_batches Lightning switches a DataLoader's shuffling off and says so; aelab's
# batches (not a DataLoader) are served in order by ImageDataModule itself then, so the note is wrong.
warnings.filterwarnings("ignore", "You requested to overfit but enabled")
# The task steps its optimizer itself; Lightning then warns that a step checkpoint holds the weights
# after the step, which is what a resume must continue from (as under automatic optimization).
warnings.filterwarnings("ignore", "Using ModelCheckpoint with manual optimization")


def build(cfg: DictConfig) -> tuple[L.LightningModule, L.LightningDataModule]:
    """The task (with its network) and the data, from the config; no file is written."""
    missing = sorted(key for key in OmegaConf.missing_keys(cfg) if not key.startswith("paths."))
    if missing:
        raise AelabError(
            f"These settings have no value: {', '.join(missing)}. Give them on the command line, "
            f"e.g. python train.py {missing[0]}=VALUE (data=folder needs data.root=PATH)."
        )
    lr = cfg.optimizer.get("lr")
    if lr is not None and not lr > 0:
        raise AelabError(f"optimizer.lr must be positive, got {lr}; e.g. optimizer.lr=1e-3.")
    check_optimizer_arguments(cfg.optimizer)
    check_trainer_arguments(cfg)
    task_class = get_class(cfg.task._target_)
    model = _instantiate(
        cfg.model, in_channels=task_class.in_channels, out_channels=task_class.out_channels
    )
    datamodule = _instantiate(cfg.data, color_space=task_class.color_space)
    size = datamodule.image_size
    if size % 2**model.pooling_stages:
        raise AelabError(
            f"A {size}×{size} image cannot pass {model.pooling_stages} 2×2 poolings and come back "
            f"at the same size: data.image_size must be a multiple of {2**model.pooling_stages}. "
            "Change the image size, use fewer model.widths, or pooling=none."
        )
    task = _instantiate(cfg.task, model=model, optimizer=_instantiate(cfg.optimizer))
    return task, datamodule


def check_optimizer_arguments(node: DictConfig) -> None:
    """The optimizer is built only when fit starts (a partial), so its arguments are checked here:
    the default Adam's `foreach` is not an argument of every optimizer, nor compatible with `fused`."""
    try:
        optimizer_class = get_class(node._target_)
    except Exception:  # an unknown class: _instantiate reports it with Hydra's own message
        return
    accepted = inspect.signature(optimizer_class).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    unknown = [key for key in node if not key.startswith("_") and key not in accepted]
    if unknown and not takes_any:
        raise AelabError(
            f"{optimizer_class.__name__} takes no {', '.join(unknown)} argument, but the config "
            f"gives optimizer.{unknown[0]} (the default Adam sets optimizer.foreach); drop it "
            f"with ~optimizer.{unknown[0]} on the command line."
        )
    if node.get("fused") and node.get("foreach"):
        raise AelabError(
            "optimizer.fused=true and optimizer.foreach=true cannot both be set; add "
            "~optimizer.foreach to use the fused kernel."
        )


def check_trainer_arguments(cfg: DictConfig) -> None:
    """The task steps its optimizer itself (AutoEncoderTask.training_step), which Lightning's
    Trainer refuses to clip or accumulate for; say what does the same, before anything runs."""
    node = cfg.trainer
    # A resumed run cannot take overrides: its saved config is what has to change.
    where = (
        f"in {Path(cfg.resume) / '.hydra' / 'config.yaml'} (this run was started before aelab "
        "stepped the optimizer itself), then resume again"
        if cfg.get("resume")
        else "on the command line"
    )
    if node.get("gradient_clip_val") or node.get("gradient_clip_algorithm"):
        raise AelabError(
            f"trainer.gradient_clip_val / trainer.gradient_clip_algorithm are set: aelab's task "
            "clips the gradients itself, right where Lightning would, so they belong to the task. "
            "Move them to task.gradient_clip_val and task.gradient_clip_algorithm ('norm' or "
            f"'value') {where}, e.g. +task.gradient_clip_val=1.0 for a new run."
        )
    accumulate = node.get("accumulate_grad_batches", 1)
    if accumulate != 1:
        raise AelabError(
            f"trainer.accumulate_grad_batches={accumulate} is not supported: aelab's task steps "
            "its optimizer itself. The losses are means over the batch, so one batch "
            f"{accumulate}× larger gives the same gradient: set data.batch_size="
            f"{accumulate * cfg.data.batch_size} instead and drop the trainer's setting {where} "
            "(under DDP data.batch_size is per process)."
        )


def _instantiate(node: DictConfig, **kwargs):
    """Hydra's instantiate, but a user error inside a constructor surfaces as itself."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        if isinstance(error.__cause__, AelabError):
            raise error.__cause__ from None
        raise


def bottleneck(model: ConvAutoEncoder, image_size: int) -> dict:
    """Latent shape, size and compression versus the input, and a sentence saying what it means."""
    latent_shape = model.latent_shape(image_size, image_size)
    latent_size = math.prod(latent_shape)
    input_size = model.in_channels * image_size * image_size
    compression = input_size / latent_size
    shape = "×".join(map(str, latent_shape))
    if latent_size < input_size:
        summary = (
            f"latent {shape} = {latent_size:,} values for a {model.in_channels}×{image_size}×"
            f"{image_size} = {input_size:,}-value input: {compression:.1f}× compression"
        )
    else:
        summary = (
            f"latent {shape} = {latent_size:,} values for a {input_size:,}-value input: NO "
            f"bottleneck (the code is {1 / compression:.1f}× larger than the input), so the "
            "network can learn to copy its input and near-perfect scores say nothing about compression"
        )
    return {
        "latent_shape": list(latent_shape),
        "latent_size": latent_size,
        "input_size": input_size,
        "compression": round(compression, 4),
        "has_bottleneck": latent_size < input_size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "summary": summary,
    }


def train(cfg: DictConfig, output_dir: Path) -> float | None:
    drop_check_without_nvml()  # a failed library load per optimizer step otherwise (aelab/nvml.py)
    L.seed_everything(cfg.seed, workers=True)
    task, datamodule = build(cfg)
    owner = launch_rank() == 0  # rank zero writes the run's files; other ranks only train
    if owner:  # data errors surface here, before a logger or checkpoint exists
        datamodule.prepare_data()
        datamodule.setup("fit")
        output_dir.mkdir(parents=True, exist_ok=True)
        write_status(output_dir, "running", pid=os.getpid(), host=socket.gethostname())
    last = output_dir / "checkpoints" / "last.ckpt"
    resumes = cfg.get("resume") or (continues_requeued_run(output_dir) and last.is_file())
    resume_from = last if resumes else None
    if resume_from:
        log.info("Resuming from %s", resume_from)

    model_facts = bottleneck(task.model, datamodule.image_size)
    log.info("Model: %s; %s parameters", model_facts["summary"], f"{model_facts['parameters']:,}")
    loggers = [instantiate(c) for c in cfg.logger.values()] if cfg.get("logger") else []
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    timer = EpochTimer()
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        logger=loggers or False,
        callbacks=[*callbacks, timer, RandomStates(), FlushLogsWithCheckpoints()],
        plugins=[AtomicCheckpointIO()],
    )
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger) and owner and not resume_from:
            logger.experiment.add_text("model/bottleneck", model_facts["summary"])

    with launch_state_restored(), frozen_heap():
        if trainer.world_size > 1:
            check_ranks_can_start(trainer)
            export_run_to_children(output_dir, bool(resume_from), cfg.get("threads"))
        trainer.fit(task, datamodule=datamodule, ckpt_path=resume_from)
        val_psnr = trainer.callback_metrics.get("val/psnr")
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        (test_metrics,) = trainer.test(task, datamodule=datamodule, ckpt_path=best or None)

    val_psnr = float(val_psnr) if val_psnr is not None else None
    if not trainer.is_global_zero:
        return val_psnr  # rank zero writes the results
    results = {
        "status": "completed",
        "task": task.name,
        "loss": task.hparams.loss,
        "test": {key.removeprefix("test/"): value for key, value in sorted(test_metrics.items())},
        "model": {**task.model.config(), **model_facts},
        "data": datamodule.split_sizes(),
        "best_checkpoint": str(Path(best).relative_to(output_dir)) if best else None,
    }
    timing = {
        "seconds_per_epoch": timer.epoch_seconds,
        "images_per_second": timer.images_per_second,
        "mean_seconds_per_epoch": sum(timer.epoch_seconds) / max(len(timer.epoch_seconds), 1),
        "torch_threads": torch.get_num_threads(),
    }
    (output_dir / "metrics.json").write_text(json.dumps(results, indent=2) + "\n")
    (output_dir / "timing.json").write_text(json.dumps(timing, indent=2) + "\n")
    params = OmegaConf.to_container(cfg, resolve=True)
    for logger in loggers:  # TensorBoard's hparams view shows each run's final test metrics
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(params, metrics=test_metrics)
        else:
            logger.log_hyperparams(params)
        logger.finalize("success")
    log.info("Test: %s", ", ".join(f"{k} {v:.4f}" for k, v in results["test"].items()))
    log.info("Run dir: %s", output_dir)
    return val_psnr


def check_ranks_can_start(trainer: L.Trainer) -> None:
    """Lightning starts a node's other DDP ranks by running this process's script again, which
    works for `python train.py` only: not from a joblib worker or a submitit job."""
    import __main__

    if trainer.strategy.cluster_environment.creates_processes_externally:
        return  # srun or torchrun started every rank already
    if getattr(__main__, "__spec__", None) is not None or not sys.argv[0].endswith(".py"):
        raise AelabError(
            f"This run asks for {trainer.world_size} DDP processes, and Lightning would start the "
            "others by running this process's command again, but this process is not "
            "`python train.py` (it is a joblib or submitit worker, or another program). Run DDP "
            "jobs with the default (basic) launcher, which runs a sweep's jobs one after "
            "another, or on SLURM let srun start one task per device "
            "(hydra/launcher=slurm hydra.launcher.tasks_per_node=N)."
        )


def write_status(output_dir: Path, status: str, **facts) -> None:
    """metrics.json before the results exist, so a report can tell a running run from a dead one."""
    (output_dir / "metrics.json").write_text(
        json.dumps({"status": status, **facts}, indent=2) + "\n"
    )


def threads_per_job(requested: int | None, parallel_jobs: int, cores: int) -> int:
    """Torch threads for one job: as asked, else this machine's cores shared by the parallel jobs.

    joblib's n_jobs = -1 means one job per core (-2 all but one, ...), so jobs × threads never
    exceeds the cores.
    """
    if requested is not None:
        if not (isinstance(requested, int) and requested > 0):
            raise AelabError(
                f"threads must be a positive integer or null (all cores), got {requested!r}."
            )
        return requested
    jobs = parallel_jobs if parallel_jobs > 0 else max(cores + 1 + parallel_jobs, 1)
    return max(1, cores // jobs)


def parallel_jobs() -> int:
    """How many jobs of this sweep run at once: the launcher's n_jobs (joblib), else 1."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return 1
    return int(HydraConfig.get().launcher.get("n_jobs") or 1)


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def discard_unused_run_dir(output_dir: Path) -> None:
    """Remove a run dir that holds only what Hydra wrote before we refused the config."""
    if output_dir.is_dir() and {p.name for p in output_dir.iterdir()} <= {".hydra", "train.log"}:
        shutil.rmtree(output_dir, ignore_errors=True)


def run(cfg: DictConfig) -> float | None:
    """What `python train.py` does with its config: train, or explain a mistake and exit 2."""
    output_dir = Path(cfg.paths.output_dir)
    try:
        torch.set_num_threads(
            threads_per_job(cfg.get("threads"), parallel_jobs(), available_cores())
        )
        log.info("Torch threads: %d", torch.get_num_threads())
        return train(cfg, output_dir)
    except (TrainingInterrupted, TrainingDiverged, AelabError) as error:
        if launch_rank() != 0:  # rank zero reports it and owns the run dir
            log.error("%s", error)
            # All ranks stop together on a signal or divergence; a non-zero exit here would make
            # Lightning kill rank zero before it has written the run's status.
            sys.exit(0 if isinstance(error, TrainingInterrupted | TrainingDiverged) else 2)
        if isinstance(error, TrainingInterrupted):
            resume = f"python train.py resume={output_dir}"
            write_status(output_dir, "interrupted", error=str(error), resume=resume)
            print(f"\naelab: {error}. Continue with: {resume}\n", file=sys.stderr)
            hand_over(error.signum)
            sys.exit(128 + error.signum)
        discard_unused_run_dir(output_dir)
        if output_dir.is_dir():
            status = "diverged" if isinstance(error, TrainingDiverged) else "failed"
            write_status(output_dir, status, error=str(error))
        print(f"\naelab: {error}\n", file=sys.stderr)
        sys.exit(2)
    except BaseException as error:
        if launch_rank() == 0 and output_dir.is_dir():
            write_status(output_dir, "failed", error=f"{type(error).__name__}: {error}")
        raise
