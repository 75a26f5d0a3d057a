"""The entry point of train.py: the command line of a resume or of a DDP rank rewritten, then
Hydra, then aelab.runtime.train."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from aelab import CONFIG_DIR
from aelab.errors import AelabError
from aelab.runtime.distributed import child_arguments
from aelab.runtime.resume import resume_arguments


def main() -> float | None:
    try:
        sys.argv[1:] = child_arguments(resume_arguments(sys.argv[1:]))
    except AelabError as error:
        print(f"\naelab: {error}\n", file=sys.stderr)
        sys.exit(2)
    return hydra_main()


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    from aelab.runtime.train import run  # torch and Lightning load only when there is a run to do

    return run(cfg)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="eval")
def eval_main(cfg: DictConfig) -> None:
    """The entry point of eval.py: Hydra with configs/eval.yaml, then aelab.runtime.evaluate."""
    from aelab.runtime.evaluate import run  # torch and Lightning load only once the line is parsed

    run(cfg)
