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


def trainer_arguments_as_written(argv: list[str]) -> list[str]:
    """argv with each plain `trainer.KEY=V` as `++trainer.KEY=V`."""
    return [f"++{a}" if PLAIN_TRAINER_KEY.match(a) else a for a in argv]


def as_typed(override: str) -> str:
    """A saved override as the user typed it, for labels: `++trainer.KEY=V` → `trainer.KEY=V`."""
    plain = override.removeprefix("++")
    return plain if PLAIN_TRAINER_KEY.match(plain) else override
