"""The settings aelab accepts (schema.py), checked before a run starts: by a Hydra callback before
the run dir exists, and by the entry points for the runs that reach them without it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from aelab.config import resolvers  # noqa: F401  (registers aelab.direction before Hydra composes)
from aelab.config.schema import SCHEMAS, check_config, config_problems
from aelab.errors import AelabError
from aelab.runtime.created import discard

__all__ = ["SCHEMAS", "ValidateConfig", "check_config", "config_problems", "refuse_invalid"]


class ValidateConfig(Callback):
    """Hydra callback (configs/checks.yaml): a run with an invalid setting exits 2 before Hydra
    makes its dir; a sweep's job, whose final config only its job sees, before it claims its dir.

    Listed before `hydra: default`, it runs before the callback that claims the run dir.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        refuse_invalid(config, config_kind(config))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        refuse_invalid(config, config_kind(config))

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.mode == RunMode.MULTIRUN:  # a single run was checked in on_run_start
            job_dir, sweep_dir = config.hydra.runtime.output_dir, config.hydra.sweep.dir
            refuse_invalid(config, config_kind(config), Path(job_dir), Path(sweep_dir))


def config_kind(config: DictConfig) -> str:
    """Which schemas apply: eval.py's config or train.py's."""
    return "eval" if config.hydra.job.config_name == "eval" else "train"


def refuse_invalid(
    cfg: DictConfig, kind: str, run_dir: Path | None = None, sweep_dir: Path | None = None
) -> None:
    """Exit 2 with one paragraph if a setting is invalid, first removing what this process made
    for the start in the run dir and the sweep dir (aelab.runtime.created)."""
    try:
        check_config(cfg, kind)
    except AelabError as error:
        discard(run_dir, sweep_dir)  # what this process made for the refused start
        print(f"\naelab: {error}\n", file=sys.stderr)
        sys.exit(2)
