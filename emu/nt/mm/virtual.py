"""Virtual memory of a process: the page-fault handler (MmAccessFault) and NtXxxVirtualMemory.

(Being written: VADs, demand-zero commit, guard pages. Until then no fault is resolved.)
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from emu.hw.cpu import CpuException
    from emu.nt.kernel import Executive
    from emu.nt.process import Process


class FaultResolution(enum.Enum):
    """What MmAccessFault made of a user-mode #PF."""

    RESOLVED = "resolved"          # the page is valid now: retry the instruction
    NOT_HANDLED = "not handled"    # a real access violation: dispatch the exception


def access_fault(ex: Executive, proc: Process, exc: CpuException) -> FaultResolution:
    """MmAccessFault for a ring-3 #PF in ``proc``."""
    return FaultResolution.NOT_HANDLED


def init_process_memory(ex: Executive, proc: Process) -> None:
    """Record a new process's image and stack regions (its first VADs)."""
