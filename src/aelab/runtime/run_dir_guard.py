"""A Hydra callback that refuses to start a run in a dir that already holds another run.

Hydra writes .hydra/ into the run dir before the run starts, so the check must come earlier
than aelab.runtime.train: on_run_start (and on_multirun_start for a sweep dir) runs before that write.
`python train.py resume=RUN_DIR` does not pass through here: it loads the run's saved config,
which registers no callbacks, and is meant to write into RUN_DIR. Nor does a requeued SLURM job,
which continues its run (aelab.runtime.requeue).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from aelab.runtime.distributed import launch_rank
from aelab.runtime.requeue import continues_requeued_run

RUN_MARKERS = (".hydra/config.yaml", "checkpoints", "metrics.json")


def holds_a_run(directory: Path) -> bool:
    return any((directory / marker).exists() for marker in RUN_MARKERS)


def refuse(directory: Path, what: str) -> None:
    print(
        f"\naelab: {directory} already holds {what}; a new run there would overwrite its config, "
        "logs and checkpoints. To continue that run: python train.py resume=RUN_DIR. To start a "
        "new one, choose another hydra.run.dir / hydra.sweep.dir, or leave it at its default (a "
        "new timestamped dir).\n",
        file=sys.stderr,
    )
    sys.exit(2)


class RefuseUsedRunDir(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        run_dir = Path(config.hydra.run.dir)
        if launch_rank() > 0 or continues_requeued_run(run_dir):
            return  # srun's other ranks share rank 0's dir; a requeued job continues its run
        if holds_a_run(run_dir):
            refuse(run_dir, "a run")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir() and any(holds_a_run(job) for job in sweep_dir.iterdir()):
            refuse(sweep_dir, "the runs of another sweep")
