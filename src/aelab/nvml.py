"""Lightning's NVML-based CUDA check, dropped where NVML's library cannot load.

Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1 when it is imported, so that
torch.cuda.is_available() asks NVML instead of initialising CUDA, which would make forking unsafe.
Where libnvidia-ml cannot be loaded (no NVIDIA driver, or a driver without NVML), torch already
falls back to the CUDA runtime's device count, so the flag only adds a failed library load to every
call, and every optimizer step makes one (torch's graph-capture health check): 0.16 ms more per Adam
step on this project's 2-core CPU (588 against 430 µs, 0.5 ms in a traced training run), and 43 µs
against 1 µs per is_available(). Without the flag torch asks the CUDA runtime directly: the same
answer it falls back to now.
"""

from __future__ import annotations

import ctypes
import os

FLAG = "PYTORCH_NVML_BASED_CUDA_CHECK"
LIBRARY = "libnvidia-ml.so.1"


def drop_check_without_nvml() -> bool:
    """Unset FLAG when it is set and NVML's library cannot be loaded; True if it was unset."""
    if os.environ.get(FLAG) != "1":
        return False
    try:
        ctypes.CDLL(LIBRARY)
    except OSError:
        del os.environ[FLAG]
        return True
    return False
