"""The task classes are imported on first use: ab_bins, losses and metrics stay free of Lightning's
import (scripts/colorize.py's memory bound counts it)."""

import importlib

_MODULES = {
    "AutoEncoderTask": "aelab.tasks.base",
    "ColorizationTask": "aelab.tasks.colorization",
    "ReconstructionTask": "aelab.tasks.reconstruction",
}


def __getattr__(name: str):
    if name in _MODULES:
        return getattr(importlib.import_module(_MODULES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_MODULES)
