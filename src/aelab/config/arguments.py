"""`trainer.KEY=VALUE` for every argument of the installed Lightning's Trainer, as written.

The trainer config lists the arguments aelab sets; Hydra refuses any other key unless it is
written `+trainer.KEY` (add) or `++trainer.KEY` (add or override). Lightning users write Trainer
flags without either, so a plain `trainer.KEY=VALUE` is handed to Hydra as `++trainer.KEY=VALUE`,
and aelab's schema (aelab.config.schema) refuses a KEY the Trainer does not take, with a
suggestion, before torch loads.
"""

from __future__ import annotations

import re

TRAINER = "lightning.pytorch.Trainer"  # configs/trainer/*.yaml's _target_
PLAIN_TRAINER_KEY = re.compile(r"trainer\.\w+=")
ADDED_TRAINER_KEY = re.compile(r"(^|,)\+\+(?=trainer\.\w+=)")  # as written by the above


def trainer_arguments_as_written(argv: list[str]) -> list[str]:
    """argv with each plain `trainer.KEY=V` as `++trainer.KEY=V`."""
    return [f"++{a}" if PLAIN_TRAINER_KEY.match(a) else a for a in argv]


def as_typed(overrides: str) -> str:
    """Saved overrides (one, or Hydra's comma-joined override_dirname) as the user typed them,
    for labels and run names: `++trainer.KEY=V` → `trainer.KEY=V`."""
    return ADDED_TRAINER_KEY.sub(r"\1", overrides)
