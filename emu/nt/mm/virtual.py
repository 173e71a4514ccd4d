"""Virtual memory of a process: NtXxxVirtualMemory, the page-fault handler, commit charge.

Three ideas, as in Windows (Windows Internals, 7th ed., ch. 5):

- Reserve vs commit. Reserving takes address space only (a VAD, emu.nt.mm.vad);
  committing charges storage against the system commit limit. Neither builds a
  PTE: a committed private page is "demand zero" until its first touch.
- MmAccessFault. A ring-3 #PF on a committed page that has no frame yet gets a
  zeroed frame and a valid PTE, and the instruction runs again. A fault on a
  reserved or free page, or one the page's protection forbids, is an access
  violation. A PAGE_GUARD page raises STATUS_GUARD_PAGE_VIOLATION once and then
  behaves as its base protection; a thread stack's guard page instead moves one
  page down, so the stack grows until its reservation is used up.
- Commit charge. Every committed page, and every page table a process may need
  for them, is charged when it is committed, so the first touch of a committed
  page can never find RAM exhausted: with no pagefile, the commit limit is the
  RAM left once the kernel has taken its share.

Addresses a process may use: MM_LOWEST_USER_ADDRESS (0x10000) up to its
``highest_address``. A request outside that range gets STATUS_INVALID_PARAMETER,
the status Windows gives for an address or size out of range (its
STATUS_INVALID_PARAMETER_2 / _4 name argument positions our ABI does not share).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from emu.hw.mmu import PTE, PFErr
from emu.nt.mm import softpte
from emu.nt.mm.address_space import Mapping, Protection, leaf_flags
from emu.nt.mm.corruption import check_all_returned
from emu.nt.mm.paging import is_paged_pool
from emu.nt.mm.pfn import FrameUse, OutOfFrames, PagingIoError
from emu.nt.mm.vad import (
    BASE_PROTECTIONS,
    MM_LOWEST_USER_ADDRESS,
    PAGE_SIZE,
    MemState,
    MemType,
    PageProtect,
    RegionInfo,
    Vad,
    VadSet,
    granule_down,
    granule_up,
    page_down,
    page_up,
    table_spans,
)
from emu.nt.status import NTSTATUS

_P, _A, _D = int(PTE.P), int(PTE.A), int(PTE.D)
_PROTECTION_FAULT = int(PFErr.P | PFErr.RSVD)   # error-code bits: the page was present

if TYPE_CHECKING:
    from emu.hw.exceptions import CpuException
    from emu.nt.interfaces import VirtualMemory
    from emu.nt.process import Process

USER_STACK_RESERVE = 1 << 20        # a thread stack's reservation (the PE default, 1 MiB)
GUARD = PageProtect.PAGE_GUARD
_GUARD = int(GUARD)
_READABLE = frozenset({PageProtect.PAGE_READONLY, PageProtect.PAGE_READWRITE,
                       PageProtect.PAGE_EXECUTE, PageProtect.PAGE_EXECUTE_READ,
                       PageProtect.PAGE_EXECUTE_READWRITE})
_WRITABLE = frozenset({PageProtect.PAGE_READWRITE, PageProtect.PAGE_EXECUTE_READWRITE})
_EXECUTABLE = frozenset({PageProtect.PAGE_EXECUTE, PageProtect.PAGE_EXECUTE_READ,
                         PageProtect.PAGE_EXECUTE_READWRITE})
# Base protections a caller may ask for (the WRITECOPY ones exist only for image views).
_REQUESTABLE = frozenset(BASE_PROTECTIONS - {PageProtect.PAGE_WRITECOPY,
                                             PageProtect.PAGE_EXECUTE_WRITECOPY})


class FaultResolution(enum.Enum):
    """What MmAccessFault made of a user-mode #PF."""

    RESOLVED = "resolved"              # the page is valid now: retry the instruction
    NOT_HANDLED = "not handled"        # a real access violation: dispatch the exception
    GUARD_PAGE = "guard page"          # a guard page, now unguarded: STATUS_GUARD_PAGE_VIOLATION
    STACK_OVERFLOW = "stack overflow"  # a stack's last guard page: STATUS_STACK_OVERFLOW
    IN_PAGE_ERROR = "in-page error"    # the pagefile failed: STATUS_IN_PAGE_ERROR


class AllocationType(enum.IntFlag):
    """NtAllocateVirtualMemory / NtFreeVirtualMemory types (winnt.h MEM_*)."""

    MEM_COMMIT = 0x1000
    MEM_RESERVE = 0x2000
    MEM_DECOMMIT = 0x4000
    MEM_RELEASE = 0x8000
    MEM_TOP_DOWN = 0x100000


class CommitLimitExceeded(OutOfFrames):
    """A new process's image and stack would take the commit charge past the limit."""


@dataclass(frozen=True)
class VmResult:
    """What an NtXxxVirtualMemory request did: a status and, on success, the range used."""

    status: int
    base: int = 0
    size: int = 0
    old_protect: int = 0


@dataclass
class SystemCommit:
    """The machine-wide commit charge (MmTotalCommittedPages) and limit (MmTotalCommitLimit:
    RAM + pagefile), in pages, and the processes holding a charge.

    Part of the charge can never be paged out here: page tables and kernel stacks. It is
    also held against ``resident_limit`` (Windows' MmResidentAvailablePages), RAM less
    what pageable pages need to run, so a pagefile cannot let a process commit more page
    tables than RAM could hold."""

    limit: int
    resident_limit: int = 0
    charged: int = 0
    peak: int = 0
    resident: int = 0
    processes: dict[int, Process] = field(default_factory=dict)

    def try_charge(self, pages: int, resident: int = 0) -> bool:
        """Charge ``pages`` (``resident`` of them never paged out) if both totals stay
        within their limits (MiChargeCommitment)."""
        if self.charged + pages > self.limit or \
                self.resident + resident > self.resident_limit:
            return False
        self.charged += pages
        self.resident += resident
        self.peak = max(self.peak, self.charged)
        return True

    def uncharge(self, pages: int, resident: int = 0) -> None:
        """Return ``pages`` of charge, ``resident`` of them resident (MiReturnCommitment)."""
        if pages > self.charged or resident > self.resident:
            raise AssertionError(f"SystemCommit.uncharge: {pages} ({resident} resident) > "
                                 f"{self.charged} ({self.resident}) charged")
        self.charged -= pages
        self.resident -= resident


def kernel_headroom(frames: int) -> int:
    """Frames kept out of the commit limit for the kernel (stacks, its page tables)."""
    return max(16, frames // 64)


def _system(ex: VirtualMemory, held: int = 0) -> SystemCommit:
    """The machine's SystemCommit, made on first use: the limit is the frames still free
    plus ``held`` (frames already taken by the process being created), less the headroom,
    plus the pagefile's slots (MmTotalCommitLimit: RAM + pagefile)."""
    system = ex.mm.commit
    if system is None:
        frames = len(ex.mm.pfn.entries)
        pagefile = ex.mm.pager.pagefile
        ram = max(0, ex.mm.pfn.available + held - kernel_headroom(frames))
        if pagefile is None:
            system = SystemCommit(ram, ram)
        else:       # leave room for the pages being paged to run in
            system = SystemCommit(ram + pagefile.slots - 1, max(0, ram - 2 * ex.mm.pager.high))
        ex.mm.commit = system
    return system


def commit_state(ex: VirtualMemory) -> SystemCommit:
    """The system commit charge and limit, after returning the charge of exited processes."""
    system = _system(ex)
    _reap(ex, system)
    return system


def _reap(ex: VirtualMemory, system: SystemCommit) -> None:
    """Return the charge of every process whose address space is gone (it exited, or its
    creation failed) without a call to release_process_memory."""
    for proc in list(system.processes.values()):
        if proc.space not in ex.mm.spaces:
            release_process_memory(ex, proc)


# -- process creation and exit -------------------------------------------------------------

def init_process_memory(ex: VirtualMemory, proc: Process) -> None:
    """Record what the kernel mapped for a new process as its first VADs (the image, the
    main stack with its guard page and growth room, any other page such as the system
    stub) and charge their commit; raises CommitLimitExceeded if the charge does not fit
    (the caller then frees the address space)."""
    vads = VadSet(highest=proc.highest_address)
    proc.vads = vads
    mapped = {m.va: m for m in proc.space.user_mappings()}
    _record_image(vads, proc)
    if proc.stack_high > proc.stack_low:
        _record_stack(vads, proc.stack_low, proc.stack_high, mapped)
    _record_other_pages(vads, mapped)
    for run in _committed_runs(vads):
        vads.charge.table_spans |= table_spans(run.start, run.end)
    vads.charge.pages = vads.committed_pages()
    tables = {span for va in mapped for span in table_spans(va, va + PAGE_SIZE)}
    system = _system(ex, held=len(mapped) + len(tables) + vads.charge.root)
    _reap(ex, system)
    if not system.try_charge(vads.charge.total, vads.charge.tables):
        raise CommitLimitExceeded(f"commit limit reached: {vads.charge.total} pages wanted, "
                                  f"{system.limit - system.charged} left")
    system.processes[proc.pid] = proc
    proc.working_set = ex.mm.pager.start_working_set(proc.space, proc.name, list(mapped))


def release_process_memory(ex: VirtualMemory, proc: Process) -> None:
    """MmCleanProcessAddressSpace, our half: return the process's commit charge, free the
    frames it kept off its page tables, forget its VADs; then the process holds no frame
    (else bug check 0x1A, emu.nt.mm.corruption). Idempotent; the page tables and mapped
    frames are AddressSpace.release_user_half's job."""
    vads = proc.vads
    if isinstance(vads, VadSet):
        ex.mm.pfn.release_many(list(vads.parked.values()))
        vads.parked.clear()
        system = ex.mm.commit
        if system is not None and system.processes.pop(proc.pid, None) is not None:
            system.uncharge(vads.charge.total, vads.charge.tables)
        vads.charge.pages, vads.charge.root = 0, 0
        vads.charge.table_spans.clear()
        vads.clear()
    check_all_returned(ex.mm, proc.pid)


def _record_image(vads: VadSet, proc: Process) -> None:
    """MEM_IMAGE VADs over the image (one per run of consecutive pages: our images have
    no holes, so that is one VAD, as on Windows), each page committed with its segment's
    protection (the kernel mapped every one)."""
    image = proc.image
    for low, high in _page_groups(sorted(image.pages)):
        vad = vads.insert(Vad(low, high, PageProtect.PAGE_EXECUTE_WRITECOPY, MemType.MEM_IMAGE))
        for va in range(low, high, PAGE_SIZE):
            vad.set_range(va, va + PAGE_SIZE, MemState.MEM_COMMIT,
                          image_protection(image.page_flags.get(va, 0)))


def _page_groups(pages: list[int]) -> list[tuple[int, int]]:
    """Sorted page addresses as [start, end) ranges of consecutive pages."""
    groups: list[tuple[int, int]] = []
    for va in pages:
        if groups and groups[-1][1] == va:
            groups[-1] = (groups[-1][0], va + PAGE_SIZE)
        else:
            groups.append((va, va + PAGE_SIZE))
    return groups


def _record_other_pages(vads: VadSet, mapped: dict[int, Mapping]) -> None:
    """Pages the kernel mapped outside the image and the stack (the system stub page that
    plays ntdll's part): one MEM_IMAGE VAD each, protected as their PTEs say."""
    for va, mapping in sorted(mapped.items()):
        if vads.find(va) is None and vads.lowest <= va <= vads.highest:
            vad = vads.insert(Vad(va, va + PAGE_SIZE, PageProtect.PAGE_EXECUTE_WRITECOPY,
                                  MemType.MEM_IMAGE))
            vad.set_range(va, va + PAGE_SIZE, MemState.MEM_COMMIT, pte_protection(mapping.pte))


def pte_protection(pte: int) -> PageProtect:
    """The page protection a valid leaf PTE gives ring 3 (RW and NX bits)."""
    return image_protection((2 if pte & PTE.RW else 0) | (0 if pte & PTE.NX else 1))


def image_protection(flags: int) -> PageProtect:
    """The page protection of ELF segment ``flags`` (PF_W 2, PF_X 1), as the loader maps it."""
    writable, executable = bool(flags & 2), bool(flags & 1)
    return {(False, False): PageProtect.PAGE_READONLY,
            (True, False): PageProtect.PAGE_READWRITE,
            (False, True): PageProtect.PAGE_EXECUTE_READ,
            (True, True): PageProtect.PAGE_EXECUTE_READWRITE}[(writable, executable)]


def _record_stack(vads: VadSet, low: int, high: int, mapped: dict[int, Mapping]) -> None:
    """The main thread's stack: [low, high) committed (the kernel mapped it), a guard page
    below, and the rest of a 1 MiB reservation (less whatever is already there) reserved
    for growth."""
    base = granule_down(max(high - USER_STACK_RESERVE, MM_LOWEST_USER_ADDRESS))
    taken = [v.end for v in vads.overlapping(base, low)]
    taken += [va + PAGE_SIZE for va in mapped if base <= va < low]
    if taken:
        base = granule_up(max(taken))
    if base > low - 2 * PAGE_SIZE:
        base = low                             # no room for a guard page: a fixed stack
    vad = vads.insert(Vad(base, high, PageProtect.PAGE_READWRITE, MemType.MEM_PRIVATE,
                          stack=base < low))
    vad.set_range(low, high, MemState.MEM_COMMIT, PageProtect.PAGE_READWRITE)
    if base < low:
        vad.set_range(low - PAGE_SIZE, low, MemState.MEM_COMMIT, PageProtect.PAGE_READWRITE | GUARD)


def create_thread_stack(ex: VirtualMemory, proc: Process, commit: int,
                        reserve: int = USER_STACK_RESERVE) -> VmResult:
    """A new thread's stack (as RtlCreateUserStack does): ``reserve`` bytes reserved
    top-down, the top ``commit`` bytes committed demand-zero with a guard page below.
    On success ``base`` is the lowest committed address and ``base + size`` the top."""
    commit, reserve = page_up(max(commit, PAGE_SIZE)), granule_up(reserve)
    if reserve < commit + 2 * PAGE_SIZE:
        return VmResult(NTSTATUS.STATUS_INVALID_PARAMETER)
    vads = proc.vads
    base = vads.find_free(reserve, top_down=True)
    if base is None:
        return VmResult(NTSTATUS.STATUS_NO_MEMORY)
    top = base + reserve
    low = top - commit
    if not _charge(ex, proc, commit // PAGE_SIZE + 1, low - PAGE_SIZE, top):
        return VmResult(NTSTATUS.STATUS_COMMITMENT_LIMIT)
    vad = vads.insert(Vad(base, top, PageProtect.PAGE_READWRITE, MemType.MEM_PRIVATE, stack=True))
    vad.set_range(low, top, MemState.MEM_COMMIT, PageProtect.PAGE_READWRITE)
    vad.set_range(low - PAGE_SIZE, low, MemState.MEM_COMMIT, PageProtect.PAGE_READWRITE | GUARD)
    return VmResult(NTSTATUS.STATUS_SUCCESS, low, commit)


def release_thread_stack(ex: VirtualMemory, proc: Process, top: int) -> int:
    """Release the stack allocation that ends at ``top`` (a thread's exit); its frames and
    commit go back. Returns the status of the MEM_RELEASE."""
    vad = proc.vads.find(top - 1)
    if vad is None or not vad.stack:
        return NTSTATUS.STATUS_MEMORY_NOT_ALLOCATED
    return free(ex, proc, vad.base, 0, AllocationType.MEM_RELEASE).status


def _committed_runs(vads: VadSet):
    """Every committed run of every VAD."""
    for vad in vads:
        for run in vad.runs:
            if run.state == MemState.MEM_COMMIT:
                yield run


# -- commit charge ---------------------------------------------------------------------------

def _charge(ex: VirtualMemory, proc: Process, pages: int, start: int, end: int) -> bool:
    """Charge ``pages`` newly committed pages in [start, end) and the page tables they may
    need that the process has not paid for yet; False if the limit does not allow it."""
    system = _system(ex)
    _reap(ex, system)
    if pages > system.limit - system.charged:
        return False                           # before counting tables of a huge range
    spans = table_spans(start, end) - proc.vads.charge.table_spans if pages else set()
    if not system.try_charge(pages + len(spans), len(spans)):
        return False
    proc.vads.charge.pages += pages
    proc.vads.charge.table_spans |= spans
    system.processes[proc.pid] = proc
    return True


def charge_system_commit(ex: VirtualMemory, pages: int) -> bool:
    """Charge ``pages`` the kernel takes for itself (a thread's kernel stack, say) against
    the system commit limit, as Windows charges kernel stacks; False if it does not fit."""
    system = _system(ex)
    _reap(ex, system)
    return system.try_charge(pages, pages)


def return_system_commit(ex: VirtualMemory, pages: int) -> None:
    """Give back a charge made by charge_system_commit."""
    _system(ex).uncharge(pages, pages)


def _uncharge(ex: VirtualMemory, proc: Process, pages: int) -> None:
    """Return the charge of ``pages`` decommitted pages (their page tables stay charged:
    the tables themselves stay until the process exits)."""
    proc.vads.charge.pages -= pages
    _system(ex).uncharge(pages)


# -- argument checks -------------------------------------------------------------------------

def check_protection(protect: int) -> int:
    """STATUS_SUCCESS if ``protect`` is one requestable PAGE_* value, optionally with
    PAGE_GUARD (not with PAGE_NOACCESS); else STATUS_INVALID_PAGE_PROTECTION."""
    # int(): the complement of an IntFlag keeps only the flag's own bits, so ~GUARD would
    # let an undefined high bit (0x80000000) through.
    base, modifiers = protect & 0xFF, protect & ~0xFF
    if base not in _REQUESTABLE or modifiers & ~int(GUARD):
        return NTSTATUS.STATUS_INVALID_PAGE_PROTECTION
    if modifiers and base == PageProtect.PAGE_NOACCESS:
        return NTSTATUS.STATUS_INVALID_PAGE_PROTECTION
    return NTSTATUS.STATUS_SUCCESS


def check_allocation(allocation_type: int, protect: int) -> int:
    """The flag checks NtAllocateVirtualMemory makes before it touches any pointer."""
    known = AllocationType.MEM_COMMIT | AllocationType.MEM_RESERVE | AllocationType.MEM_TOP_DOWN
    # int(): the IntFlag complement would drop every bit the flag does not define.
    if allocation_type & ~int(known) or not allocation_type & (AllocationType.MEM_COMMIT |
                                                          AllocationType.MEM_RESERVE):
        return NTSTATUS.STATUS_INVALID_PARAMETER
    return check_protection(protect)


def check_free_type(free_type: int) -> int:
    """NtFreeVirtualMemory takes exactly one of MEM_DECOMMIT and MEM_RELEASE."""
    if free_type not in (AllocationType.MEM_DECOMMIT, AllocationType.MEM_RELEASE):
        return NTSTATUS.STATUS_INVALID_PARAMETER
    return NTSTATUS.STATUS_SUCCESS


def _in_user_range(proc: Process, start: int, end: int) -> bool:
    """True if [start, end) is non-empty and inside 0x10000 .. highest_address."""
    return MM_LOWEST_USER_ADDRESS <= start < end <= proc.highest_address + 1


# -- NtAllocateVirtualMemory -----------------------------------------------------------------

def allocate(ex: VirtualMemory, proc: Process, base: int, size: int, allocation_type: int,
             protect: int) -> VmResult:
    """NtAllocateVirtualMemory: reserve and/or commit; returns the rounded base and size."""
    status = check_allocation(allocation_type, protect)
    if status != NTSTATUS.STATUS_SUCCESS:
        return VmResult(status)
    if size == 0 or size > proc.highest_address + 1:
        return VmResult(NTSTATUS.STATUS_INVALID_PARAMETER)
    if base and not allocation_type & AllocationType.MEM_RESERVE:
        return _commit_reserved(ex, proc, page_down(base), page_up(base + size), protect)
    return _reserve(ex, proc, base, size, allocation_type, protect)


def _reserve(ex: VirtualMemory, proc: Process, base: int, size: int, allocation_type: int,
             protect: int) -> VmResult:
    """MEM_RESERVE (perhaps with MEM_COMMIT), or MEM_COMMIT at NULL, which reserves too."""
    vads = proc.vads
    if base:
        start, end = granule_down(base), page_up(base + size)
        if not _in_user_range(proc, start, end):
            return VmResult(NTSTATUS.STATUS_INVALID_PARAMETER)
        if vads.overlapping(start, end):
            return VmResult(NTSTATUS.STATUS_CONFLICTING_ADDRESSES)
    else:
        found = vads.find_free(page_up(size),
                               top_down=bool(allocation_type & AllocationType.MEM_TOP_DOWN))
        if found is None:
            return VmResult(NTSTATUS.STATUS_NO_MEMORY)
        start, end = found, found + page_up(size)
    commit = bool(allocation_type & AllocationType.MEM_COMMIT)
    if commit and not _charge(ex, proc, (end - start) // PAGE_SIZE, start, end):
        return VmResult(NTSTATUS.STATUS_COMMITMENT_LIMIT)
    vad = vads.insert(Vad(start, end, protect, MemType.MEM_PRIVATE))
    if commit:
        vad.set_range(start, end, MemState.MEM_COMMIT, protect)
    return VmResult(NTSTATUS.STATUS_SUCCESS, start, end - start)


def _commit_reserved(ex: VirtualMemory, proc: Process, start: int, end: int,
                     protect: int) -> VmResult:
    """MEM_COMMIT inside one existing private reservation; pages already committed keep
    their contents and take the new protection."""
    if not _in_user_range(proc, start, end):
        return VmResult(NTSTATUS.STATUS_INVALID_PARAMETER)
    vad = proc.vads.find(start)
    if vad is None or not vad.contains(start, end) or vad.type != MemType.MEM_PRIVATE:
        return VmResult(NTSTATUS.STATUS_CONFLICTING_ADDRESSES)
    new_pages = vad.count(start, end, MemState.MEM_RESERVE)
    if not _charge(ex, proc, new_pages, start, end):
        return VmResult(NTSTATUS.STATUS_COMMITMENT_LIMIT)
    vad.set_range(start, end, MemState.MEM_COMMIT, protect)
    _sync_ptes(ex, proc, vad, start, end)
    return VmResult(NTSTATUS.STATUS_SUCCESS, start, end - start)


# -- NtFreeVirtualMemory ---------------------------------------------------------------------

def free(ex: VirtualMemory, proc: Process, base: int, size: int, free_type: int) -> VmResult:
    """NtFreeVirtualMemory: MEM_DECOMMIT a range, or MEM_RELEASE a whole allocation."""
    status = check_free_type(free_type)
    if status != NTSTATUS.STATUS_SUCCESS:
        return VmResult(status)
    start = page_down(base)
    end = page_up(base + size) if size else start + PAGE_SIZE
    if not _in_user_range(proc, start, end):
        return VmResult(NTSTATUS.STATUS_INVALID_PARAMETER)
    vad = proc.vads.find(start)
    if vad is None:
        return VmResult(NTSTATUS.STATUS_MEMORY_NOT_ALLOCATED)
    if vad.type != MemType.MEM_PRIVATE:
        return VmResult(NTSTATUS.STATUS_UNABLE_TO_DELETE_SECTION)
    if free_type == AllocationType.MEM_RELEASE and size:
        return VmResult(NTSTATUS.STATUS_INVALID_PARAMETER)   # VirtualFree's rule: whole only
    if not size:
        if start != vad.base:
            return VmResult(NTSTATUS.STATUS_FREE_VM_NOT_AT_BASE)
        end = vad.end
    if end > vad.end:
        return VmResult(NTSTATUS.STATUS_UNABLE_TO_FREE_VM)
    _decommit(ex, proc, vad, start, end)
    if free_type == AllocationType.MEM_RELEASE:
        proc.vads.remove(vad)
    return VmResult(NTSTATUS.STATUS_SUCCESS, start, end - start)


def _decommit(ex: VirtualMemory, proc: Process, vad: Vad, start: int, end: int) -> None:
    """Free the frames of the committed pages in [start, end), return their charge, and
    leave the range reserved."""
    pages = 0
    for run in vad.runs_in(start, end):
        if run.state != MemState.MEM_COMMIT:
            continue
        pages += run.pages
        for va in range(run.start, run.end, PAGE_SIZE):
            _discard_frame(ex, proc, va)
    vad.set_range(start, end, MemState.MEM_RESERVE)
    _uncharge(ex, proc, pages)


def _discard_frame(ex: VirtualMemory, proc: Process, va: int) -> None:
    """Clear the PTE of the page at ``va`` and free its frame or pagefile slot, wherever
    the page is kept."""
    pfn = proc.space.discard_page(va)
    if pfn is None:
        pfn = proc.vads.parked.pop(va, None)
    if pfn is not None:
        ex.mm.pfn.release(pfn)


# -- NtProtectVirtualMemory ------------------------------------------------------------------

def protect(ex: VirtualMemory, proc: Process, base: int, size: int, new_protect: int) -> VmResult:
    """NtProtectVirtualMemory: every page of the range must be committed, in one allocation;
    ``old_protect`` is the protection its first page had."""
    status = check_protection(new_protect)
    if status != NTSTATUS.STATUS_SUCCESS:
        return VmResult(status)
    start, end = page_down(base), page_up(base + size)
    if size == 0 or not _in_user_range(proc, start, end):
        return VmResult(NTSTATUS.STATUS_INVALID_PARAMETER)
    vad = proc.vads.find(start)
    if vad is None:
        return VmResult(NTSTATUS.STATUS_MEMORY_NOT_ALLOCATED)
    if not vad.contains(start, end):
        return VmResult(NTSTATUS.STATUS_CONFLICTING_ADDRESSES)
    if vad.count(start, end, MemState.MEM_COMMIT) != (end - start) // PAGE_SIZE:
        return VmResult(NTSTATUS.STATUS_NOT_COMMITTED)
    old = vad.run_at(start).protect
    vad.set_range(start, end, MemState.MEM_COMMIT, new_protect)
    _sync_ptes(ex, proc, vad, start, end)
    return VmResult(NTSTATUS.STATUS_SUCCESS, start, end - start, old)


def _sync_ptes(ex: VirtualMemory, proc: Process, vad: Vad, start: int, end: int) -> None:
    """Make the valid PTEs of [start, end) say what the VAD says: new rights, or no PTE at
    all for PAGE_NOACCESS and PAGE_GUARD (the frame is kept aside until the page is
    accessible and touched again)."""
    space = proc.space
    for run in vad.runs_in(start, end):
        for va in range(run.start, run.end, PAGE_SIZE):
            mapping = space.checked_lookup(va)          # its frame is kept aside or remapped
            if mapping is None:
                space.set_software_protection(va, softpte.mm_protection(run.protect))
                continue
            if not _accessible(run.protect):
                space.unmap_page(va)
                proc.vads.parked[va] = mapping.pfn
                continue
            kept = PTE(mapping.pte & (PTE.A | PTE.D))
            space.map_page(va, mapping.pfn, _pte_flags(ex, run.protect, mapping.pfn) | kept)


def _accessible(protect: int) -> bool:
    """Can any access reach a page with ``protect`` without a fault of ours first?"""
    return (protect & 0xFF) in _READABLE and not protect & GUARD


def _pte_flags(ex: VirtualMemory, protect: int, pfn: int) -> PTE:
    """The leaf bits for ``protect``; a frame made executable again after it held code
    drops translated code first (Unicorn caches it by physical page)."""
    base = protect & 0xFF
    if base in _EXECUTABLE:
        entry = ex.mm.pfn.entries[pfn]
        if entry.had_code:
            ex.cpu.flush_translated_code()
        entry.had_code = True
    flags = _USER_LEAF.get(base)
    if flags is None:                   # once per protection: no enum work on every fault
        flags = _USER_LEAF[base] = leaf_flags(Protection(base), user=True)
    return flags


_USER_LEAF: dict[int, PTE] = {}      # PAGE_* (low byte) -> the leaf bits of a user page


# -- NtQueryVirtualMemory --------------------------------------------------------------------

def query(ex: VirtualMemory, proc: Process, address: int) -> tuple[int, RegionInfo | None]:
    """NtQueryVirtualMemory(MemoryBasicInformation): the region holding ``address``."""
    if address > proc.highest_address:
        return NTSTATUS.STATUS_INVALID_PARAMETER, None
    return NTSTATUS.STATUS_SUCCESS, proc.vads.query(address)


# -- MmAccessFault ---------------------------------------------------------------------------

def access_fault(ex: VirtualMemory, proc: Process, exc: CpuException) -> FaultResolution:
    """MmAccessFault for a ring-3 #PF in ``proc``: only a not-present fault can be ours to
    resolve; a protection fault on a valid page is always an access violation."""
    # Only the page matters here: the exact byte (a disassembly) is not worked out for it.
    va = exc.address if exc.page is None else exc.page
    if va is None or exc.error_code & _PROTECTION_FAULT:
        return FaultResolution.NOT_HANDLED
    return resolve_fault(ex, proc, va, exc.access or "read")


def resolve_fault(ex: VirtualMemory, proc: Process, va: int, access: str) -> FaultResolution:
    """Resolve a not-present ``access`` ("read", "write", "fetch") to ``va`` from the VADs."""
    vads = proc.vads
    if not isinstance(vads, VadSet) or not 0 <= va <= proc.highest_address:
        return FaultResolution.NOT_HANDLED
    vad = vads.find(va)
    if vad is None:
        return FaultResolution.NOT_HANDLED
    page = page_down(va)
    run = vad.run_at(page)
    if run.state != MemState.MEM_COMMIT:
        return FaultResolution.NOT_HANDLED
    protect = int(run.protect)             # a plain int: no IntFlag arithmetic per fault
    if protect & _GUARD:
        return _guard_page_fault(ex, proc, vad, page, access)
    if not _allows(protect, access):
        return FaultResolution.NOT_HANDLED
    return _make_valid(ex, proc, page, protect, access)


def _allows(protect: int, access: str) -> bool:
    """Does ``protect`` allow ``access``? Reads of PAGE_EXECUTE pages succeed: x86 paging
    has no execute-only pages (Windows x64 behaves the same)."""
    base = protect & 0xFF
    if access == "write":
        return base in _WRITABLE
    if access == "fetch":
        return base in _EXECUTABLE
    return base in _READABLE


def _make_valid(ex: VirtualMemory, proc: Process, page: int, protect: int,
                access: str) -> FaultResolution:
    """The demand-zero (or kept-aside) frame of a committed page, mapped with Accessed set
    and Dirty only for a write; NOT_HANDLED if RAM is gone after all."""
    space = proc.space
    pte_pa = space.pte_address(page, create=False)     # walked once: page_in reads it too
    if pte_pa is not None and ex.mm.mem.read_u64(pte_pa) & _P:
        return FaultResolution.NOT_HANDLED       # valid already: not a fault we explain
    pfn = proc.vads.parked.pop(page, None)
    try:
        if pfn is None:      # in transition (soft fault) or in the pagefile (hard fault)?
            pfn = ex.mm.pager.page_in(space, page, FrameUse.PRIVATE, proc.pid, pte_pa=pte_pa)
        if pfn is None:
            pfn = ex.mm.allocate_frame(FrameUse.PRIVATE, proc.pid, page)
            ex.mm.pager.demand_zero(space, page)
        flags = int(_pte_flags(ex, protect, pfn)) | _A     # plain ints: no IntFlag per fault
        if access == "write":
            flags |= _D
        space.map_page(page, pfn, flags)
    except OutOfFrames as err:
        if pfn is not None:
            ex.mm.pfn.release(pfn)
        if isinstance(err, PagingIoError):
            proc.in_page_error = err.status
            return FaultResolution.IN_PAGE_ERROR
        return FaultResolution.NOT_HANDLED
    return FaultResolution.RESOLVED


def page_in_system(ex: VirtualMemory, va: int, access: str) -> bool:
    """A not-present fault at ring 0 on PagedPool: bring the page back (soft or hard fault)
    and make it valid; False if ``va`` is not a paged-out PagedPool page."""
    if not is_paged_pool(va):
        return False
    page, space = page_down(va), ex.mm.system
    try:
        pfn = ex.mm.pager.page_in(space, page, FrameUse.KERNEL, None)
    except OutOfFrames:
        return False
    if pfn is None:
        return False
    flags = leaf_flags(Protection.PAGE_READWRITE, user=False) | PTE.A
    space.map_page(page, pfn, flags | (PTE.D if access == "write" else 0))
    return True


def _guard_page_fault(ex: VirtualMemory, proc: Process, vad: Vad, page: int,
                      access: str) -> FaultResolution:
    """The first touch of a guard page: a stack's guard moves down; any other guard page
    loses PAGE_GUARD and the toucher gets STATUS_GUARD_PAGE_VIOLATION."""
    protect = vad.run_at(page).protect & ~GUARD
    if vad.stack:
        return _grow_stack(ex, proc, vad, page, protect, access)
    vad.set_range(page, page + PAGE_SIZE, MemState.MEM_COMMIT, protect)
    return FaultResolution.GUARD_PAGE


def _grow_stack(ex: VirtualMemory, proc: Process, vad: Vad, page: int, protect: int,
                access: str) -> FaultResolution:
    """MiCheckForUserStackOverflow: commit a new guard page below ``page`` and let the touch
    go on. The reservation's lowest page is never committed: when the guard would have to
    go there, the guard stays and the thread has overflowed its stack."""
    below = page - PAGE_SIZE
    if below <= vad.base or vad.run_at(below).state != MemState.MEM_RESERVE or \
            proc.space.lookup(below) is not None:     # mapped by someone the VADs do not know
        return FaultResolution.STACK_OVERFLOW
    if not _charge(ex, proc, 1, below, page):
        return FaultResolution.STACK_OVERFLOW
    vad.set_range(below, page, MemState.MEM_COMMIT, protect | GUARD)
    vad.set_range(page, page + PAGE_SIZE, MemState.MEM_COMMIT, protect)
    _move_stack_limit(proc, page + PAGE_SIZE, page)
    if not _allows(protect, access):
        return FaultResolution.NOT_HANDLED
    return _make_valid(ex, proc, page, protect, access)


def _move_stack_limit(proc: Process, old: int, new: int) -> None:
    """The TEB's StackLimit: the process's (and any thread's) lowest committed stack page."""
    for owner in (proc, *getattr(proc, "threads", ())):
        if getattr(owner, "stack_low", None) == old:
            owner.stack_low = new


# -- user buffers the executive touches ------------------------------------------------------

def fault_in_user_range(ex: VirtualMemory, proc: Process, address: int, length: int,
                        access: str) -> int:
    """Before the executive copies to or from [address, address + length): do what
    MmAccessFault would for each page not valid yet (demand-zero, stack growth). Returns
    STATUS_GUARD_PAGE_VIOLATION or STATUS_STACK_OVERFLOW when the copy would have raised
    one (as a system service then returns it), else STATUS_SUCCESS; pages it cannot make
    valid are left for probe_and_read / probe_and_write to refuse."""
    if length <= 0 or address < 0 or address + length > proc.highest_address + 1:
        return NTSTATUS.STATUS_SUCCESS
    for page in range(page_down(address), page_up(address + length), PAGE_SIZE):
        if proc.space.lookup(page) is not None:
            continue
        resolution = resolve_fault(ex, proc, page, access)
        if resolution is FaultResolution.GUARD_PAGE:
            return NTSTATUS.STATUS_GUARD_PAGE_VIOLATION
        if resolution is FaultResolution.STACK_OVERFLOW:
            return NTSTATUS.STATUS_STACK_OVERFLOW
        if resolution is FaultResolution.NOT_HANDLED:
            break
    return NTSTATUS.STATUS_SUCCESS
