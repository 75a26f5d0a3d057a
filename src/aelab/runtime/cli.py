"""The entry points of train.py and eval.py: the command line of a resume or of a DDP rank
rewritten, then Hydra, the settings checked, then aelab.runtime.train (or evaluate)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException, OverrideParseException, SearchPathException
from omegaconf import DictConfig

from aelab import CONFIG_DIR
from aelab.config import refuse_invalid
from aelab.config.arguments import trainer_arguments_as_written
from aelab.config.suggest import did_you_mean
from aelab.errors import AelabError
from aelab.runtime.distributed import child_arguments, launch_rank
from aelab.runtime.resume import resume_arguments
from aelab.runtime.stops import listening

# Hydra's errors in the command line or the config files (an unknown group option, a key typo):
# Hydra prints them, with the choices, and exits 1; they are the user's, so aelab exits 2.
COMMAND_LINE_ERRORS = (ConfigCompositionException, OverrideParseException, SearchPathException)


def main() -> float | None:
    try:
        arguments = trainer_arguments_as_written(sys.argv[1:])
        sys.argv[1:] = child_arguments(resume_arguments(arguments))
    except AelabError as error:
        print(f"\naelab: {error}\n", file=sys.stderr)
        sys.exit(2)
    return exit_2_for_command_line_errors(hydra_main, "train")


def eval_main() -> None:
    """The entry point of eval.py: Hydra with configs/eval.yaml, then aelab.runtime.evaluate."""
    exit_2_for_command_line_errors(hydra_eval_main, "eval")


def exit_2_for_command_line_errors(
    entry: Callable[[], float | None], config_name: str
) -> float | None:
    try:
        return entry()
    except SystemExit as stop:
        # Hydra exits from inside its `except`, so the error it printed is the exit's context.
        if stop.code == 1 and isinstance(stop.__context__, COMMAND_LINE_ERRORS):
            suggestion = did_you_mean(error_text(stop.__context__), config_name, sys.argv[1:])
            if suggestion:
                print(f"\naelab: {suggestion}\n", file=sys.stderr)
            sys.exit(2)
        raise


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    with listening():  # a stop signal from here on ends the job as an interruption
        refuse_invalid_settings(cfg, "train")
        from aelab.runtime.train import run  # torch and Lightning load only for a run to do

        return run(cfg)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="eval")
def hydra_eval_main(cfg: DictConfig) -> None:
    with listening():
        refuse_invalid_settings(cfg, "eval")
        from aelab.runtime.evaluate import run  # torch and Lightning load once the line is parsed

        run(cfg)


def error_text(error: BaseException) -> str:
    """The error's message with its causes' (Hydra wraps OmegaConf's 'not in struct')."""
    parts = []
    while error is not None:
        parts.append(str(error))
        error = error.__cause__
    return "\n".join(parts)


def refuse_invalid_settings(cfg: DictConfig, kind: str) -> None:
    """The settings checked in the run, before torch loads, where Hydra's callbacks did not: a
    resumed run and a DDP rank load a saved config, which brings no ValidateConfig callback."""
    if HydraConfig.initialized() and "validate_config" in HydraConfig.get().callbacks:
        return  # checked before the run dir existed
    own_dir = Path(cfg.paths.output_dir) if launch_rank() == 0 else None  # ranks share rank 0's
    refuse_invalid(cfg, kind, own_dir)
