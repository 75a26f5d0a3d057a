from aelab.tasks.base import AutoEncoderTask
from aelab.tasks.colorization import ColorizationTask
from aelab.tasks.reconstruction import ReconstructionTask

__all__ = ["AutoEncoderTask", "ColorizationTask", "ReconstructionTask"]
