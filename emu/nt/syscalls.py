"""The system service table: what ``syscall`` from ring 3 can ask of the executive.

The ABI (docs/abi.md): number in RAX, arguments in RDI, RSI, RDX, R10, R8, R9,
result in RAX. Services are registered in an explicit table keyed by number
(KiServiceTable on Windows); a number with no entry returns
STATUS_INVALID_SYSTEM_SERVICE.

Every pointer from user mode is hostile: ``probe_and_read`` plays
ProbeForRead plus the try/except around the copy, so a bad pointer comes back
as STATUS_ACCESS_VIOLATION instead of crashing anything.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TYPE_CHECKING

from emu.hw import mmu
from emu.nt.layout import MM_USER_PROBE_ADDRESS, PAGE_SIZE
from emu.nt.status import NTSTATUS

if TYPE_CHECKING:
    from emu.nt.interfaces import ConsoleService, Kernel, SystemService
    from emu.nt.process import Process

MAX_WRITE = 1 << 20


class Service(enum.IntEnum):
    """Service numbers (docs/abi.md)."""

    NtTerminateProcess = 0x00
    NtWriteConsole = 0x01
    NtGetCurrentProcessId = 0x02
    NtClose = 0x03
    NtDuplicateObject = 0x04
    NtWaitForSingleObject = 0x05
    NtYieldExecution = 0x06
    NtDelayExecution = 0x07
    NtCreateProcess = 0x08
    NtCreateThread = 0x09
    NtTerminateThread = 0x0A
    NtCreateEvent = 0x0B
    NtSetEvent = 0x0C
    NtResetEvent = 0x0D
    NtOpenFile = 0x0E
    NtReadFile = 0x0F
    NtQueryExitStatus = 0x10
    NtGetCurrentThreadId = 0x11
    NtWriteFile = 0x12
    NtDeviceIoControlFile = 0x13
    NtReadFileEx = 0x14
    NtSetSystemInformation = 0x15
    NtAllocateVirtualMemory = 0x20
    NtFreeVirtualMemory = 0x21
    NtProtectVirtualMemory = 0x22
    NtQueryVirtualMemory = 0x23
    NtSetExceptionDispatcher = 0x24
    NtContinue = 0x25


class UserAccessViolation(Exception):
    """A user pointer failed its probe or its copy (becomes STATUS_ACCESS_VIOLATION)."""


Handler = Callable[["Kernel", "Process", tuple[int, ...]], "int | None"]
SERVICE_TABLE: dict[Service, Handler] = {}


def service(number: Service) -> Callable[[Handler], Handler]:
    """Register a handler for ``number`` in SERVICE_TABLE."""
    def register(fn: Handler) -> Handler:
        if number in SERVICE_TABLE:
            raise AssertionError(f"service {number!r} registered twice")
        SERVICE_TABLE[number] = fn
        return fn
    return register


# The whole executive: the service table's handlers each take their own view of it, and
# this passes them all the one it got (a Kernel covers every view).
def dispatch(ex: Kernel, proc: Process, number: int, args: tuple[int, ...]) -> int | None:
    """KiSystemService: run the handler for ``number``; the result goes back in RAX (None:
    the calling thread gets no result now, because it blocked or ended)."""
    # Keyed by Service, an IntEnum: the number finds its entry as it is (no enum made).
    handler = SERVICE_TABLE.get(number)
    if handler is None:
        return NTSTATUS.STATUS_INVALID_SYSTEM_SERVICE
    try:
        return handler(ex, proc, args)
    except UserAccessViolation:
        return NTSTATUS.STATUS_ACCESS_VIOLATION
    except UserStatus as err:
        return err.status


class UserStatus(Exception):
    """A probe ran into something the service returns as its status (a guard page)."""

    def __init__(self, status: int) -> None:
        super().__init__(hex(status))
        self.status = status


def _fault_in(ex: SystemService, address: int, length: int, access: str) -> None:
    """Make committed-but-untouched pages valid before copying, as the page-fault handler
    would for an access from kernel mode (MmAccessFault with a user address)."""
    from emu.nt.mm import virtual

    if ex.current is None:
        return
    status = virtual.fault_in_user_range(ex, ex.current, address, length, access)
    if status != NTSTATUS.STATUS_SUCCESS:
        raise UserStatus(status)


def check_user_range(address: int, length: int) -> None:
    """The first half of ProbeForRead/ProbeForWrite: [address, address + length) must end at
    or below MmUserProbeAddress and not wrap past 2^64 (a kernel-half or non-canonical
    address fails here), else UserAccessViolation; a length of 0 checks nothing."""
    end = address + length
    if length and (address < 0 or end > MM_USER_PROBE_ADDRESS or end > 1 << 64):
        raise UserAccessViolation(address)      # reaches into the kernel half, or wraps


def _user_pages(ex: SystemService, address: int, length: int, access: str, mark: bool = True):
    """ProbeForRead/ProbeForWrite: check [address, address + length) lies below
    MmUserProbeAddress, then page by page make the page valid (demand zero, stack growth,
    paged back in) and yield (offset, physical address, byte count), each page checked as
    a ring-3 ``access`` would be (so a read-only page refuses a write exactly as the CPU
    would), A/D bits set if ``mark``. Use each page before asking for the next: making a
    later page valid may trim an earlier one."""
    check_user_range(address, length)
    end = address + length
    va = address
    while va < end:
        _fault_in(ex, va, 1, access)
        try:
            pa = ex.cpu.walk(va, access, cpl=3, set_accessed_dirty=mark).pa
        except (mmu.PageFault, mmu.GeneralProtection):
            raise UserAccessViolation(va) from None
        n = min(end - va, PAGE_SIZE - (va % PAGE_SIZE))
        yield va - address, pa, n
        va += n


def probe(ex: SystemService, address: int, length: int, access: str) -> None:
    """ProbeForRead (``access`` "read") or ProbeForWrite ("write"): every page of the buffer
    accessible so from ring 3, or UserAccessViolation (UserStatus for a guard page); nothing
    is copied."""
    for _ in _user_pages(ex, address, length, access, mark=False):
        pass


def probe_for_read(ex: SystemService, address: int, length: int) -> None:
    """ProbeForRead: every byte of the buffer readable from ring 3, or UserAccessViolation
    (UserStatus for a guard page); nothing is copied. Services call it for every pointer
    before they act, so a bad pointer never leaves half a side effect."""
    probe(ex, address, length, "read")


def probe_for_write(ex: SystemService, address: int, length: int) -> None:
    """ProbeForWrite (Microsoft: "checks that a user-mode buffer actually resides in the
    user-mode portion of the address space, is writable"): every page writable from ring 3,
    or UserAccessViolation; nothing is written."""
    probe(ex, address, length, "write")


def probe_and_read(ex: SystemService, address: int, length: int) -> bytes:
    """ProbeForRead + copy: ``length`` bytes of the caller's memory, or UserAccessViolation."""
    if length == 0:
        return b""
    return b"".join(ex.mem.read(pa, n) for _, pa, n in _user_pages(ex, address, length, "read"))


def probe_and_write(ex: SystemService, address: int, data: bytes) -> None:
    """ProbeForWrite + copy: store ``data`` in the caller's memory, or UserAccessViolation."""
    if not data:
        return
    if address % PAGE_SIZE + len(data) > PAGE_SIZE:  # one page: its own walk is its probe
        probe_for_write(ex, address, len(data))      # all checked before a byte
    for offset, pa, n in _user_pages(ex, address, len(data), "write"):
        ex.mem.write(pa, data[offset:offset + n])
        ex.cpu.invalidate_page(address + offset)   # the TLB may hold it without its new D bit


def probe_limited(ex: SystemService, address: int, length: int, limit: int, access: str) -> int:
    """A buffer argument with a service limit, in the order docs/abi.md gives: a range that
    wraps or reaches MmUserProbeAddress is STATUS_ACCESS_VIOLATION whatever its length; a
    valid range longer than ``limit`` is STATUS_INVALID_PARAMETER (no page is looked at);
    then every page is probed for ``access``. STATUS_SUCCESS, or the status to return."""
    check_user_range(address, length)
    if length > limit:
        return NTSTATUS.STATUS_INVALID_PARAMETER
    probe(ex, address, length, access)
    return NTSTATUS.STATUS_SUCCESS


@service(Service.NtWriteConsole)
def nt_write_console(ex: ConsoleService, proc: Process, args: tuple[int, ...]) -> int:
    """NtWriteConsole(Buffer, Length): write bytes of the caller's memory to the console."""
    buffer, length = args[0], args[1]
    status = probe_limited(ex, buffer, length, MAX_WRITE, "read")
    if status != NTSTATUS.STATUS_SUCCESS:
        return status
    ex.console_write(proc, probe_and_read(ex, buffer, length))
    return NTSTATUS.STATUS_SUCCESS


@service(Service.NtGetCurrentProcessId)
def nt_get_current_process_id(ex: SystemService, proc: Process, args: tuple[int, ...]) -> int:
    """NtGetCurrentProcessId(): the caller's process id (returned as a value, not a status)."""
    return proc.pid
