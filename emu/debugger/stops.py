"""What the debugger's run control works with: why the machine stopped, and the points that
stop it (breakpoints, watchpoints, catchpoints). Plain records: the session (emu.debugger.session)
acts on them, the front ends (the shell, the gdb stub) read them."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class SessionError(Exception):
    """A run-control request that cannot be done now (one line, for the user)."""


class StopReason(enum.Enum):
    """Why the machine paused."""

    START = "start"               # before the first instruction
    STEP = "step"                 # a step (stepi, nexti, finish, until, reverse-stepi) ended
    BREAKPOINT = "breakpoint"
    WATCHPOINT = "watchpoint"
    CATCH = "catch"               # a catchpoint's event
    EXCEPTION = "exception"       # an exception no handler took: it ends its process
    INTERRUPT = "interrupt"       # Ctrl-C
    EXITED = "exited"             # the machine has ended: every process is done
    BUGCHECK = "bugcheck"         # the machine has ended with a bug check
    HISTORY_START = "history-start"   # reverse execution reached boot


@dataclass
class Stop:
    """One stop of the machine, as a front end reports it."""

    reason: StopReason
    description: str
    number: int | None = None      # breakpoint, watchpoint or catchpoint number
    watch_kind: str | None = None  # "write", "read" or "access" for a watchpoint
    address: int | None = None     # the watched address that was hit
    exit_code: int | None = None   # EXITED: the first process's exit status & 0xff
    exit_status: str = ""          # EXITED: that process and its whole 32-bit status, in words
    exception: Any = None          # the CpuException behind a catch or the end, if any
    position: int = 0              # instructions completed since boot

    @property
    def ended(self) -> bool:
        """Whether the machine has finished (nothing left to run forward)."""
        return self.reason in (StopReason.EXITED, StopReason.BUGCHECK)


class CatchKind(enum.Enum):
    """Events a catchpoint can stop on (``catch KIND [FILTER]``)."""

    EXCEPTION = "exception"       # filter: a vector number or name (PF, GP, 14...)
    PAGE_FAULT = "page-fault"
    SYSCALL = "syscall"           # filter: a service number or name
    RING = "ring"                 # filter: "3->0" or "0->3"
    CR3 = "cr3"                   # an address-space switch
    INTERRUPT = "interrupt"       # a device interrupt (and its ISR)
    DPC = "dpc"
    DRIVER_LOAD = "driver-load"
    PROCESS_CREATE = "process-create"
    PROCESS_EXIT = "process-exit"
    BUGCHECK = "bugcheck"


@dataclass
class Breakpoint:
    """A stop before the instruction at ``address`` (virtual, or physical)."""

    number: int
    address: int
    pid: int | None = None         # only in this process (virtual breakpoints)
    physical: bool = False
    condition: str | None = None
    temporary: bool = False
    enabled: bool = True
    hits: int = 0
    internal: bool = False         # made by next/finish/until: not listed, not numbered
    guard: Callable[[], bool] | None = None    # extra test for internal breakpoints
    start: bool = False            # the session's first stop (START)
    reverse: bool = False          # reverse-finish's search: its hits are noted, never stops
    condition_error: str | None = None         # why the condition failed at this arrival


@dataclass
class Watchpoint:
    """A stop after an instruction that reads and/or writes [address, address + length)."""

    number: int
    address: int
    length: int
    kind: str                      # "write", "read" or "access"
    pid: int | None = None
    physical: bool = False
    enabled: bool = True
    hits: int = 0


@dataclass
class Catchpoint:
    """A stop at an event of the executive."""

    number: int
    kind: CatchKind
    filter: str | None = None
    enabled: bool = True
    hits: int = 0
