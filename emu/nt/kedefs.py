"""Ke's shared definitions: the values the executive's parts exchange at run time.

Why the whole machine stops (MachineStop and its reasons), what a kernel routine run by
``call_kernel`` returns (KernelCallResult), and the IRQLs the executive itself names.
Nothing of emu/nt is imported here: every part may import it.
"""

from __future__ import annotations

from dataclasses import dataclass

# IRQLs (wdm.h): PASSIVE_LEVEL, DISPATCH_LEVEL, and the DIRQL of the slow device.
PASSIVE_LEVEL, DISPATCH_LEVEL, DEVICE_IRQL = 0, 2, 5

# Why the whole machine stops before its processes end (MachineStop.reason).
INSTRUCTION_LIMIT = "instruction limit"
INTERRUPTED = "interrupted"
DEADLOCK = "deadlock"


class MachineStop(Exception):
    """The whole machine stops before its processes end: ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class KernelCallResult:
    """What a kernel routine run by ``call_kernel`` returned, and the IRQL it returned at
    (the caller's IRQL is back once it has returned)."""

    rax: int
    irql: int = PASSIVE_LEVEL
