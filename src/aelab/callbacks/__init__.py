"""Lightning callbacks: what a run shows while it trains and what keeps it recoverable."""

from aelab.callbacks.checkpoint_extras import (
    CheckpointPathsInRunDir,
    FlushLogsWithCheckpoints,
    RandomStates,
)
from aelab.callbacks.divergence import StopOnDivergence, TrainingDiverged
from aelab.callbacks.monitoring import EpochTimer, PreviewImages
from aelab.callbacks.progress import EpochProgressBar
from aelab.callbacks.signals import SaveOnSignal
from aelab.runtime.stops import TrainingInterrupted

__all__ = [
    "CheckpointPathsInRunDir",
    "EpochProgressBar",
    "EpochTimer",
    "FlushLogsWithCheckpoints",
    "PreviewImages",
    "RandomStates",
    "SaveOnSignal",
    "StopOnDivergence",
    "TrainingDiverged",
    "TrainingInterrupted",
]
