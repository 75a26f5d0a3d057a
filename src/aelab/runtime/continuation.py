"""`python train.py ckpt_path=RUN/checkpoints/X.ckpt`: Lightning's meaning, a new run dir that
continues the checkpoint's training from its full state (weights, optimizer and scheduler with
their settings, epoch and step counters, callbacks' state); RUN is only read.

What Lightning would do silently is refused here, before the new run dir exists: a checkpoint
without its run (nothing to check the settings and data against), settings its state would
override (the optimizer's lr, a scheduler's T_max), limits that leave no step to train, and data
other than the run's. `init_weights=` starts a new run from the weights alone, which is what most
of these command lines mean; each refusal says so.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from aelab.data import identity
from aelab.errors import AelabError
from aelab.runtime.resume import refuse_manual_optimization_checkpoint
from aelab.runtime.run_config import checkpoint_run_dir, load_run_config

log = logging.getLogger("aelab")
RESTORED_NODES = ("optimizer", "scheduler")  # settings Lightning restores from the state
RUN_LENGTH = ("trainer.max_epochs", "trainer.max_steps")  # a one-cycle schedule's length
LENGTH = ", the length of the one-cycle schedule its state keeps"
EPOCH_ORDER = ("data.batch_size", "data.shuffle_seed")  # what a position in the epoch counts in
POSITION = ", which its place in the epoch counts in"


CHECKED_IN_RUN = (
    "ckpt_path= continues its run's training, whose optimizer settings and data are checked"
)


def weights_instead(path: Path) -> str:
    """The one-line hint for a command line that means a new run from the weights."""
    return (
        "To start a new run from its network weights only (epoch 0, a fresh optimizer and "
        f"schedule: fine-tuning, or training longer on a new schedule), use init_weights={path}."
    )


def refuse_other_settings(
    path: Path, run_dir: Path, cfg: DictConfig, mid_epoch: bool = False
) -> None:
    """The optimizer and scheduler settings must be the checkpoint's run's: Lightning loads their
    state over this run's, settings included, so a changed lr or T_max would be ignored. Saved
    mid-epoch, its place in the epoch is a count of batches of the run's epoch order."""
    saved = load_run_config(run_dir)  # refused here if it names code aelab does not
    nodes = RESTORED_NODES + (RUN_LENGTH if _length_from_the_run(cfg) else ())
    nodes += EPOCH_ORDER if mid_epoch else ()
    why = dict.fromkeys(RUN_LENGTH, LENGTH) | dict.fromkeys(EPOCH_ORDER, POSITION)
    try:
        differs = [
            f"{key}: {now!r} here, {then!r} in its run" + why.get(key, "")
            for node in nodes
            for key, now, then in _differences(node, _select(cfg, node), _select(saved, node))
        ]
    except OmegaConfBaseException as error:  # an interpolation that resolves only elsewhere
        raise AelabError(
            f"ckpt_path={path}: the optimizer and scheduler settings of this run or of {run_dir} "
            f"cannot be resolved to compare them ({error}). " + weights_instead(path)
        ) from None
    if differs:
        raise AelabError(
            f"ckpt_path={path} continues that run's training, and Lightning restores its "
            "optimizer and scheduler with the settings they had there, over this run's "
            f"({'; '.join(differs)}). Leave them as its run had them to continue it. "
            + weights_instead(path)
        )


def _length_from_the_run(cfg: DictConfig) -> bool:
    """Whether the scheduler's length is the run's own (OneCycleLR without total_steps or
    epochs: AutoEncoderTask.configure_optimizers sets the Trainer's estimated steps), which its
    restored state keeps from the checkpoint's run."""
    settings = OmegaConf.select(cfg, "scheduler.scheduler")
    return OmegaConf.is_config(settings) and (
        "total_steps" in settings and not (settings.get("total_steps") or settings.get("epochs"))
    )


def _select(cfg: DictConfig, key: str):
    return OmegaConf.select(cfg, key, default=None)


def _differences(prefix: str, now, then) -> list[tuple[str, object, object]]:
    """(key, value here, value in the run) for each resolved setting that differs."""
    now, then = _plain(now), _plain(then)
    if not (isinstance(now, dict) and isinstance(then, dict)):
        return [] if now == then else [(prefix, now, then)]
    return [
        found
        for key in sorted(set(now) | set(then))
        for found in _differences(f"{prefix}.{key}", now.get(key), then.get(key))
    ]


def _plain(node):
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def refuse_zero_steps(path: Path, checkpoint: dict, trainer: DictConfig) -> None:
    """Lightning trains nothing when the checkpoint's epochs (or steps) reach the limits: the run
    would end at once and test the checkpoint's weights as its result."""
    epochs = _epochs_done(checkpoint)
    steps = int(checkpoint.get("global_step", 0))
    max_epochs, max_steps = trainer.get("max_epochs"), trainer.get("max_steps", -1)
    if max_steps not in (None, -1) and steps >= max_steps:
        limit, reached, raise_to = f"trainer.max_steps={max_steps}", f"{steps} steps", steps
    elif max_epochs not in (None, -1) and epochs >= max_epochs:
        limit, reached, raise_to = f"trainer.max_epochs={max_epochs}", f"{epochs} epochs", epochs
    else:
        return
    setting = limit.split("=")[0]
    raise AelabError(
        f"ckpt_path={path} continues a training that has done {reached} (step {steps}), so "
        f"{limit} leaves it no step to train. To train it longer, give {setting} above "
        f"{raise_to}. " + weights_instead(path)
    )


def _mid_epoch(checkpoint: dict) -> bool:
    """Whether the checkpoint was saved inside an epoch (ImageDataModule.state_dict's count)."""
    position = checkpoint.get("ImageDataModule")  # Lightning keys it by the class name
    return isinstance(position, dict) and bool(position.get("train_batches_done"))


def _epochs_done(checkpoint: dict) -> int:
    """Epochs the checkpoint's training finished: Lightning counts an epoch as processed before
    its end-of-epoch checkpoint is written, and reads that count to decide it is done."""
    try:
        return int(checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
    except (KeyError, TypeError):
        return int(checkpoint.get("epoch", 0))


def checkpoint_to_continue(cfg: DictConfig) -> tuple[Path, dict] | None:
    """ckpt_path=PATH resolved, with the checkpoint's contents, once they can be continued with
    this config; None without ckpt_path=. Needs no Lightning: the network is checked once the
    task is built (aelab.runtime.train.refuse_other_network)."""
    if cfg.get("ckpt_path") and cfg.get("init_weights"):
        raise AelabError(
            f"ckpt_path={cfg.ckpt_path} and init_weights={cfg.init_weights} are two ways to "
            "start: ckpt_path= continues a checkpoint's training (its optimizer, schedule and "
            "epoch count), init_weights= starts a new run from its network weights only. Give one."
        )
    if not cfg.get("ckpt_path"):
        return None
    from aelab.models.checkpoint import read_checkpoint  # torch loads only for a checkpoint

    path = Path(str(cfg.ckpt_path)).expanduser().resolve()
    checkpoint = read_checkpoint(path)
    run_dir = checkpoint_run_dir(path, CHECKED_IN_RUN, weights_instead(path))
    refuse_manual_optimization_checkpoint(path, checkpoint)
    refuse_other_settings(path, run_dir, cfg, _mid_epoch(checkpoint))
    refuse_zero_steps(path, checkpoint, cfg.trainer)
    return path, checkpoint


def check_data(path: Path, datamodule) -> None:
    """A continuation trains on its run's images (its test split stays unseen, its position in
    the epoch means the same images); a run from before data.json cannot be checked."""
    run_dir = checkpoint_run_dir(path, CHECKED_IN_RUN, weights_instead(path))
    saved = identity.recorded(run_dir)
    if saved is None:
        log.warning(
            "%s has no %s (it started before aelab recorded a run's data), so whether "
            "ckpt_path= continues it on the images it trained on cannot be checked.",
            run_dir,
            identity.DATA_JSON,
        )
        return
    identity.check(
        run_dir,
        datamodule,
        saved,
        f"ckpt_path={path} cannot continue its training",
        "A continuation goes on with the images its run trained on, or its test split could "
        "hold images it trained on: give that run's data (its .hydra/overrides.yaml). "
        + weights_instead(path),
    )


def announce(path: Path, checkpoint: dict) -> None:
    """One line that says which meaning ckpt_path= has, with the other's name."""
    log.info(
        "Continuing the training of %s from epoch %d, step %d (weights, optimizer, scheduler, "
        "counters) in a new run dir; init_weights=PATH starts from the weights only",
        path,
        _epochs_done(checkpoint),
        int(checkpoint.get("global_step", 0)),
    )
