"""The Hydra entry point of train.py: parse the command line, then hand over to aelab.train."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from aelab import CONFIG_DIR


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    from aelab.train import run  # torch and Lightning load only when there is a run to do

    return run(cfg)
