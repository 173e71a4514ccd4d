"""Watching memory: which frame a store really reached, and what a page holds.

WriteWatch adds a Unicorn UC_HOOK_MEM_WRITE for a stretch of ring-0 code (a DPC, a
DriverEntry) and records every store. In the machine's UC_TLB_VIRTUAL mode Unicorn hands
the hook the PHYSICAL address (the result of our own page walk), so each store names its
frame directly; the PFN database (emu.nt.mm.pfn) then says whose frame it is. The virtual
address the code used comes from decoding the storing instruction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from unicorn import UC_HOOK_MEM_WRITE

from emu.fmt import addr
from emu.hw.faultaddr import memory_accesses
from emu.nt import layout
from emu.nt.drivers import driver_at
from emu.nt.io import IRP_SIZE
from emu.nt.mm.pfn import FrameUse

if TYPE_CHECKING:
    from emu.nt.drivers import Driver
    from emu.nt.kernel import Executive
    from emu.nt.process import Process

PAGE = layout.PAGE_SIZE


@dataclass(frozen=True)
class WriteRun:
    """Consecutive bytes stored into one frame by ring-0 code."""

    pfn: int
    offset: int          # first byte, within the frame
    data: bytes
    va: int              # the virtual address the code stored to (first byte)
    rip: int             # the first storing instruction
    owner: int | None    # the process whose page the frame is (PFN database), None: kernel
    owner_va: int | None  # the virtual address the frame backs in its owner, if known

    @property
    def pa(self) -> int:
        """The physical address of the run's first byte."""
        return self.pfn * PAGE + self.offset


class WriteWatch:
    """Records the stores the CPU makes between ``start`` and ``stop``."""

    def __init__(self, ex: Executive) -> None:
        self._ex = ex
        self._hook = None
        self._stores: list[tuple[int, int, int, int, int]] = []   # pa, size, value, va, rip
        self._last_rip: int | None = None
        self._last_page = 0

    @property
    def active(self) -> bool:
        """Whether stores are being recorded now."""
        return self._hook is not None

    def start(self) -> None:
        """Begin recording (a no-op if already recording)."""
        if self._hook is None:
            self._stores = []
            self._last_rip = None
            self._hook = self._ex.cpu.uc.hook_add(UC_HOOK_MEM_WRITE, self._on_write)

    def stop(self) -> list[WriteRun]:
        """Stop recording; the stores merged into runs per frame, in order."""
        if self._hook is not None:
            self._ex.cpu.uc.hook_del(self._hook)
            self._hook = None
        return self._runs()

    def _on_write(self, _uc, _access, address: int, size: int, value: int, _user) -> None:
        cpu = self._ex.cpu
        rip = cpu.rip
        if rip != self._last_rip:         # decode each storing instruction once per run
            self._last_rip = rip
            insn = cpu.decode_at(rip)
            writes = [a for a in memory_accesses(insn, cpu.reg_named) if a.write] \
                if insn is not None else []
            self._last_page = writes[0].address & ~(PAGE - 1) if writes else 0
        va = self._last_page | (address & (PAGE - 1))
        self._stores.append((address, size, value & ((1 << (8 * size)) - 1), va, rip))

    def _runs(self) -> list[WriteRun]:
        """Stores to consecutive bytes of one frame form one run, even with other stores
        (the stack, say) in between; runs are in the order of their first store."""
        runs: list[WriteRun] = []
        ends: dict[int, int] = {}                  # physical end of a run -> its index
        pfn_db = self._ex.mm.pfn
        for pa, size, value, va, rip in self._stores:
            data = value.to_bytes(size, "little")
            at = ends.pop(pa, None)
            if at is not None and pa % PAGE:       # continues a run in the same frame
                last = runs[at]
                runs[at] = WriteRun(last.pfn, last.offset, last.data + data, last.va,
                                    last.rip, last.owner, last.owner_va)
                ends[pa + size] = at
                continue
            pfn = pa // PAGE
            entry = pfn_db.entries[pfn] if pfn < len(pfn_db.entries) else None
            owner = entry.owner if entry is not None and entry.use is FrameUse.PRIVATE \
                else None
            owner_va = entry.va if entry is not None else None
            ends[pa + size] = len(runs)
            runs.append(WriteRun(pfn, pa % PAGE, data, va, rip, owner, owner_va))
        return runs


def kernel_area(ex: Executive, va: int) -> str:
    """What part of the kernel half ``va`` is in, in words."""
    driver = driver_at(ex, va)
    if driver is not None:
        return f"the image of {driver.image.name}"
    areas = ((layout.KERNEL_SYSTEM_PTES, "a system-space mapping (an MDL's view)"),
             (layout.KERNEL_POOL_PAGED, "PagedPool"), (layout.KERNEL_POOL_NX, "NonPagedPoolNx"),
             (layout.KERNEL_POOL, "NonPagedPool"), (layout.KERNEL_STACK_BASE, "a kernel stack"),
             (layout.KERNEL_SPACE_START, "the kernel's own pages"))
    for start, name in areas:
        if va >= start:
            return name
    return "user space"


def is_bookkeeping(ex: Executive, run: WriteRun, own: Driver | None) -> bool:
    """Stores a routine makes to its stack or to its own driver's globals: not the data."""
    if run.owner is not None:
        return False
    if layout.KERNEL_STACK_BASE <= run.va < layout.KERNEL_POOL:
        return True
    if any(irp <= run.va < irp + IRP_SIZE for irp in ex.io.irps):
        return True                      # IoStatus and friends: the IRP's own fields
    return own is not None and driver_at(ex, run.va) is own


def read_user(proc: Process, va: int, n: int) -> bytes | None:
    """``n`` bytes at ``va`` in ``proc``'s address space, read through its page tables;
    None when a page is not valid there (never mapped, trimmed, or the process is gone)."""
    out = bytearray()
    mem = proc.space.mm.mem
    while len(out) < n:
        at = va + len(out)
        mapping = proc.space.lookup(at)
        if mapping is None:
            return None
        chunk = min(n - len(out), PAGE - (at & (PAGE - 1)))
        out += mem.read(mapping.pfn * PAGE + (at & (PAGE - 1)), chunk)
    return bytes(out)


def text_of(data: bytes | None) -> str:
    """The NUL-terminated text at the start of ``data``, printable characters only."""
    if data is None:
        return "(no valid page)"
    raw = data.split(b"\0", 1)[0]
    return "".join(chr(b) if 32 <= b < 127 else "." for b in raw)


def frame_words(ex: Executive, run: WriteRun) -> str:
    """``frame 0xc1`` with, when the PFN database knows, whose page it is."""
    if run.owner is not None:
        proc = next((p for p in ex.processes if p.pid == run.owner), None)
        name = f' "{proc.name}"' if proc is not None else ""
        where = f" at {addr(run.owner_va, ticks=True)}" if run.owner_va is not None else ""
        return f"frame {addr(run.pfn)}, the page of process {run.owner}{name}{where}"
    return f"frame {addr(run.pfn)}, {kernel_area(ex, run.va)} (no process's page)"
