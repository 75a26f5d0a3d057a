"""A run's config, read back outside Hydra (by eval.py, resume=, the report, or in a notebook)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from aelab.config.trusted import (
    refuse_hydra_keys,
    refuse_unsafe_yaml,
    refuse_untrusted,
)
from aelab.errors import AelabError

RETIRED_PROFILER = "aelab.profiler.NoProfiler"
# Hydra's log of the job "eval" (there from its start), and its results.
EVAL_FILES = ("eval.log", "eval.json")


def is_eval_dir(directory: Path) -> bool:
    """Whether eval.py wrote the dir (it holds a .hydra/config.yaml too, but is no run), even
    when its evaluation failed before eval.json."""
    return any((directory / name).exists() for name in EVAL_FILES)


def checkpoint_run_dir(checkpoint: Path, needs: str, advice: str = "") -> Path:
    """RUN of RUN/checkpoints/NAME.ckpt, refused where that holds no run's config: `needs` says
    what the caller reads from it."""
    run_dir = checkpoint.parent.parent
    if not (run_dir / ".hydra" / "config.yaml").is_file():
        raise AelabError(
            f"{checkpoint} is not inside a run dir (no {run_dir}/.hydra/config.yaml): {needs}. "
            "Give a checkpoint where python train.py left it, RUN/checkpoints/NAME.ckpt (e.g. "
            f"outputs/runs/<run>/checkpoints/best.ckpt). {advice}".rstrip()
        )
    return run_dir


def load_run_config(
    run_dir: str | Path,
    output_dir: str | Path | None = None,
    trusted_modules: Sequence[str] | None = None,
) -> DictConfig:
    """RUN_DIR/.hydra/config.yaml with paths.output_dir set to output_dir (default: run_dir),
    refused unless everything it would build is a class of `trusted_modules` (default: aelab's and
    those the user named, aelab.config.trusted.trusted_now()):
    a run dir may come from anyone.

    The saved config says `output_dir: ${hydra:runtime.output_dir}`, which resolves only inside a
    Hydra job; with a concrete path in its place every setting resolves. This is the way to read a
    run's config in a notebook:

        cfg = load_run_config("outputs/runs/<run>")
        task, datamodule = aelab.runtime.train.build(cfg)
    """
    run_dir = Path(run_dir)
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        raise AelabError(
            f"{run_dir} is not a run dir: it has no .hydra/config.yaml. Give the dir of a run "
            "written by python train.py, e.g. outputs/runs/<date>_<time>.<µs>."
        )
    try:
        text = path.read_text()
        refuse_unsafe_yaml(text, str(path))
        cfg = OmegaConf.create(text)  # one read: the text checked is the text loaded
        refuse_hydra_keys(cfg, str(path))
        if not isinstance(cfg, DictConfig):
            raise AelabError(f"{path} holds a list, not a run's config.")
        with open_dict(cfg):
            output_dir = str(output_dir if output_dir is not None else run_dir)
            OmegaConf.update(cfg, "paths.output_dir", output_dir, force_add=True)
            # Older runs named a no-op profiler that aelab no longer ships; it recorded nothing.
            if OmegaConf.select(cfg, "trainer.profiler._target_") == RETIRED_PROFILER:
                del cfg.trainer["profiler"]
    except (OSError, ValueError, yaml.YAMLError, OmegaConfBaseException) as error:
        raise AelabError(f"{path} cannot be read: {error}") from None
    refuse_untrusted(cfg, str(path), trusted_modules)
    return cfg
