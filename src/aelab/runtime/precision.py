"""A warning when bf16 on the CPU would be emulated: slower than float32, not faster."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.accelerators import CPUAccelerator

log = logging.getLogger(__name__)

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # the instructions oneDNN's bf16 convolutions use
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: Path | None = None) -> set[str] | None:
    """The CPU's feature flags on Linux; None where the system does not list them."""
    try:
        text = (cpuinfo or CPUINFO).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return None


def warn_if_bf16_is_emulated(trainer: L.Trainer, cpuinfo: Path | None = None) -> bool:
    """Says so when a bf16 run trains on a CPU without bf16 instructions; True when it did."""
    on_cpu = isinstance(trainer.accelerator, CPUAccelerator)
    if not (on_cpu and str(trainer.precision).startswith("bf16")):
        return False
    flags = cpu_flags(cpuinfo)
    if flags is None or flags & set(BF16_CPU_FLAGS):
        return False
    log.warning(
        "trainer.precision=%s on a CPU without bf16 instructions (none of %s in /proc/cpuinfo): "
        "torch emulates bf16 there, several times slower than float32 (docs/performance.md). Add "
        "trainer.precision=32-true to train in float32.",
        trainer.precision,
        ", ".join(BF16_CPU_FLAGS),
    )
    return True
