"""The resolvers aelab's config files use, registered with aelab.config, before Hydra composes."""

from __future__ import annotations

import os

from omegaconf import OmegaConf

from aelab.choices import OPTIMIZED_METRICS
from aelab.errors import AelabError


def direction(metric: str) -> str:
    """`${aelab.direction:${optimized_metric}}`: Optuna's direction for the metric a run returns
    (maximize val/psnr, minimize val/loss), so that the search follows optimized_metric."""
    if metric not in OPTIMIZED_METRICS:
        raise AelabError(
            f"optimized_metric={metric} is not a metric aelab knows the direction of; use one of "
            f"{', '.join(OPTIMIZED_METRICS)}."
        )
    return OPTIMIZED_METRICS[metric]


def metric_name(metric: str) -> str:
    """`${aelab.metric_name:${optimized_metric}}`: psnr for val/psnr, a word for a study's name
    (a study is one search: another metric needs a study of its own)."""
    direction(metric)  # a metric aelab knows
    return metric.removeprefix("val/")


def working_dir() -> str:
    """`${aelab.cwd:}`: the dir the run was started from, absolute (as Hydra's runtime.cwd, but
    also outside a Hydra job: a config composed in a test or a notebook resolves)."""
    return os.getcwd()


OmegaConf.register_new_resolver("aelab.cwd", working_dir, replace=True)
OmegaConf.register_new_resolver("aelab.direction", direction, replace=True)
OmegaConf.register_new_resolver("aelab.metric_name", metric_name, replace=True)
