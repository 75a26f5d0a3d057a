from aelab.tasks.base import AutoEncoderTask
from aelab.tasks.reconstruction import ReconstructionTask

__all__ = ["AutoEncoderTask", "ReconstructionTask"]
