"""What a debugger target reports: plain frozen records, the same for a live machine and a
crash dump, so that every view is one function of them (emu.debugger.views)."""

from __future__ import annotations

from dataclasses import dataclass, field


class TargetError(Exception):
    """A request the target cannot answer, with the reason in one line for the user."""


@dataclass(frozen=True)
class ThreadInfo:
    """One thread (ETHREAD): its id, state, and where it is if known."""

    tid: int
    state: str                       # "ready", "running", "waiting", "terminated"
    rip: int | None = None           # saved (or live) RIP; the start address if never run
    started: bool = True             # False: it has never been on the CPU


@dataclass(frozen=True)
class ProcessInfo:
    """One process (EPROCESS) as the debugger shows it."""

    pid: int
    name: str
    cr3: int
    bits: int
    state: str                       # "ready", "running", "terminated"
    threads: list[ThreadInfo] = field(default_factory=list, compare=False)
    has_space: bool = True           # False once its address space is torn down
    exit_status: int | None = None
    parent_pid: int | None = None
    path: str = ""


@dataclass(frozen=True)
class ImageInfo:
    """A loaded image: an app in a process, or a driver in the shared kernel half."""

    name: str
    kind: str                        # "app" or "driver"
    pid: int | None                  # the process of an app; None for a driver
    base: int
    end: int
    path: str = ""
    symbols: dict[str, int] = field(default_factory=dict, compare=False, repr=False)
    bits: int = 64
    unloaded: bool = False
    # A PE driver's .pdata (emu.nt.unwind.RuntimeFunction, sorted), for unwinding, and its
    # sections (emu.nt.pe.Section) for lm; empty for other images.
    functions: tuple = field(default=(), compare=False, repr=False)
    sections: tuple = field(default=(), compare=False, repr=False)


@dataclass(frozen=True)
class RegionRecord:
    """Pages [base, end) of one VAD with one state and protection (VirtualQuery's view)."""

    base: int
    end: int
    state: str                       # "commit" or "reserve"
    protect: int                     # winnt.h PAGE_* (0 when reserved)
    type: str                        # "image", "private", "mapped"
    allocation_base: int
    stack: bool = False              # a thread stack's VAD


@dataclass(frozen=True)
class PfnRecord:
    """The PFN database's record of one frame (MMPFN, reduced)."""

    pfn: int
    use: str                         # emu.nt.mm.pfn.FrameUse value
    owner: int | None = None
    va: int | None = None
    pte_pa: int | None = None
    slot: int | None = None
    modified: bool = False
    locks: int = 0
    had_code: bool = False


@dataclass(frozen=True)
class HandleRecord:
    """One entry of a process's handle table."""

    value: int
    type: str                        # ObjectType value: "Event", "File", "Process"...
    detail: str


@dataclass(frozen=True)
class TlbEntry:
    """One cached translation: a virtual page, its frame and the rights it was filled with,
    and the PCID it was cached for (SDM Vol. 3A 4.10.1)."""

    mode: str                        # "user", "kernel", "kernel AC=1"
    vpage: int
    ppage: int
    rights: int                      # emu.hw.mmu.Prot bits
    pcid: int | None = 0             # CR3[11:0] when it was cached; None: global (every PCID)
    space: int | None = None         # the page tables that PCID names now (None: the loaded)
    owned: bool = True               # False: no live address space holds that PCID now


@dataclass(frozen=True)
class IrpRef:
    """An IRP the I/O manager knows about."""

    address: int
    completed: bool
