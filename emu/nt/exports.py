"""Kernel exports: the routines a driver imports (ntoskrnl's exports, reduced).

Each export has an address in a kernel page that is never mapped. A driver's
call lands there, the instruction fetch faults at ring 0, and the executive
sees an export address instead of a bug: it reads the arguments by the
Microsoft x64 calling convention (RCX, RDX, R8, R9, then the stack above the
32-byte shadow space), runs the routine in Python, puts the result in RAX and
returns to the caller, as `ret` would. The table is explicit: an import
with no entry refuses the driver's load, naming it.

Drivers are PE images: they bind by (DLL, name), and only to the exports registered here,
each with the WDK's x64 signature AND behaviour. The WDK's routines live in emu.nt.ntos,
one module per component (Ex, Io, Ke, Mm, Ps, Rtl, Hal); the first ones registered live
here.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from emu.hw.faultaddr import decode
from emu.nt import kintr, layout
from emu.nt.bugcheck import BugCheck
from emu.nt.mm.pfn import OutOfFrames
from emu.nt.pool import POOL_RAISE_IF_ALLOCATION_FAILURE, BadPoolCall
from emu.nt.status import NTSTATUS

if TYPE_CHECKING:
    from emu.nt.interfaces import ExSupport, IoSystem, Kernel, KernelMemory

EXPORT_STRIDE = 16
BAD_POOL_CALLER = 0xC2


class ExceptionRaised(Exception):
    """A routine raised a structured exception, as ExRaiseStatus does for ProbeForRead or
    MmProbeAndLockPages: raise this from an export, and the kernel dispatches it to the
    calling driver's exception handlers (``status`` is ExceptionCode; ``information``,
    at most 15 values, is ExceptionInformation; ``flags`` is ExceptionFlags: by default
    EXCEPTION_NONCONTINUABLE, as for every exception ExRaiseStatus raises)."""

    def __init__(self, status: int, information: tuple[int, ...] = (), *,
                 flags: int = 0x01) -> None:
        super().__init__(f"exception 0x{status:08X}")
        self.status = status & 0xFFFF_FFFF
        self.information = information
        self.flags = flags


class ExportCall:
    """The arguments of one call to an export (Microsoft x64 calling convention)."""

    def __init__(self, ex: KernelMemory) -> None:
        self.ex = ex
        self.rsp = ex.cpu.reg("rsp")
        self.return_address = ex.kernel_read_u64(self.rsp)

    def arg(self, i: int) -> int:
        """Argument ``i`` (0-based): RCX, RDX, R8, R9, then [rsp + 8 + 32 + 8 * (i - 4)]."""
        if i < 4:
            return self.ex.cpu.reg(("rcx", "rdx", "r8", "r9")[i])
        return self.ex.kernel_read_u64(self.rsp + 8 + 32 + 8 * (i - 4))


Handler = Callable[["Kernel", ExportCall], "int | None"]


@dataclass(frozen=True)
class Export:
    """One kernel export: its name, the DLL a driver imports it from, its routine and its
    trap address."""

    name: str
    dll: str | None             # None: the executive's own routine (no driver imports it)
    handler: Handler
    address: int


# Registration order fixes each export's trap address: the modules that register exports
# are imported in one fixed order (emu.nt.ntos), so the addresses are the same every run.
_TABLE: list[Export] = []
PE_DLLS = ("ntoskrnl.exe", "hal.dll")
_PE: dict[tuple[str, str], Export] = {}     # what a driver may import, by (DLL, name)
EXPORTS: dict[str, Handler] = {}            # every export by name (the debugger's nt!Name)


def export(name: str, *, dll: str | None) -> Callable[[Handler], Handler]:
    """Register ``name`` as an export of ``dll`` ("ntoskrnl.exe" or "hal.dll"): only a
    routine whose x64 signature AND behaviour are the WDK's. ``dll=None``: a routine of the
    executive's own with a trap address (IopInvalidDeviceRequest) that no driver imports."""
    if dll is not None and dll not in PE_DLLS:
        raise AssertionError(f"export {name}: unknown DLL {dll}")

    def register(fn: Handler) -> Handler:
        if name in EXPORTS:
            raise AssertionError(f"export {name} registered twice")
        entry = Export(name, dll, fn, layout.KERNEL_EXPORTS + len(_TABLE) * EXPORT_STRIDE)
        _TABLE.append(entry)
        EXPORTS[name] = fn
        if dll is not None:
            _PE[(dll, name)] = entry
        return fn
    return register


def address_of(name: str) -> int | None:
    """The trap address of the export ``name`` (the debugger's ``nt!name``; also the
    executive's own routines registered as exports), or None if not exported."""
    entry = next((e for e in _TABLE if e.name == name), None)
    return None if entry is None else entry.address


def pe_address_of(dll: str, name: str) -> int | None:
    """The address a PE driver's import of ``dll!name`` is bound to (DLL names compared
    case-insensitively, as Windows compares module names), or None."""
    entry = _PE.get((dll.lower(), name))
    return None if entry is None else entry.address


def pe_names(dll: str) -> list[str]:
    """The names a PE driver may import from ``dll``, sorted (for docs and messages)."""
    return sorted(name for (d, name) in _PE if d == dll.lower())


def _entry_at(address: int) -> Export | None:
    offset = address - layout.KERNEL_EXPORTS
    if offset < 0 or offset % EXPORT_STRIDE or offset // EXPORT_STRIDE >= len(_TABLE):
        return None
    return _TABLE[offset // EXPORT_STRIDE]


def name_at(address: int) -> str | None:
    """The export whose trap address is ``address``."""
    entry = _entry_at(address)
    return None if entry is None else entry.name


def handler_at(address: int) -> Handler | None:
    """The routine of the export whose trap address is ``address``."""
    entry = _entry_at(address)
    return None if entry is None else entry.handler


def call_site(ex: KernelMemory, return_address: int) -> int:
    """The address of the `call` that returns to ``return_address`` (a noreturn call is the
    last instruction of its function: what follows it is padding, not the culprit)."""
    # Decoding backwards is ambiguous: `41 ff d4` (call r12) ends with `ff d4` (call rsp).
    # A REX prefix with its B bit set names r8-r15, which a compiler writes only when it
    # needs it, so the 3-byte call with REX.B comes before the 2-byte call it ends with;
    # any other 3-byte reading (`48 ff d0`: a byte of the previous instruction, then
    # call rax) is the 2-byte call.
    for size in (6, 5, 3, 2, 7):                 # call [rip+d32], call rel32, call reg ...
        try:
            code = ex.kernel_read(return_address - size, size)
        except BugCheck:
            continue
        if size == 3 and code[0] & 0xF1 != 0x41:
            continue
        insn = decode(code, return_address - size)
        if insn is not None and insn.mnemonic == "call" and insn.size == size:
            return return_address - size
    return return_address


# -- printing ------------------------------------------------------------------------------

# %ws and %S: a NUL-terminated wide string; %wZ: a UNICODE_STRING; %Z: an ANSI_STRING (the
# DbgPrintEx reference's format list). Wide text prints as ASCII, '?' for anything else.
_SPEC = re.compile(rb"%([-0 #+]*)(\d*)(?:\.(\d+))?(hh|h|ll|l|I64|z|I|w)?([diuxXpscSZ%])")
# "Any single call to DbgPrint will only transmit 512 bytes of information" (the DbgPrint
# reference): the rest is cut off, so a width of %999999999d costs nothing.
DBGPRINT_LIMIT = 512


def format_message(ex: KernelMemory, fmt: bytes, call: ExportCall, first: int,
                   limit: int = DBGPRINT_LIMIT) -> bytes:
    """A printf-style format with the call's arguments from index ``first`` on (at most
    ``limit`` bytes of it: DbgPrint's 512 unless the caller, _snprintf, says)."""
    out = bytearray()
    pos, index = 0, first
    for m in _SPEC.finditer(fmt):
        if len(out) >= limit:
            break
        out += fmt[pos:m.start()]
        pos = m.end()
        flags, width, precision, size, conv = m.groups()
        if conv == b"%":
            out += b"%"
            continue
        value = call.arg(index)
        index += 1
        out += _convert(ex, conv, size, value, flags, min(int(width or 0), limit),
                        None if precision is None else min(int(precision), limit), limit)
    out += fmt[pos:]
    return bytes(out[:limit])


def _convert(ex: KernelMemory, conv: bytes, size: bytes | None, value: int, flags: bytes,
             width: int, precision: int | None = None, limit: int = DBGPRINT_LIMIT) -> bytes:
    """One conversion, as the C run-time's printf does it: for a string the precision is
    the most characters printed; for an integer the fewest digits (zero-padded, and the
    0 flag then ignored)."""
    # MS x64: int and long are 32 bits; pointers, %ll, %I64 and %z are 64.
    bits = 64 if size in (b"ll", b"I64", b"z", b"I") or conv in (b"p", b"s", b"S", b"Z") \
        else 32
    value &= (1 << bits) - 1
    if conv in (b"s", b"S", b"Z") and not value:
        text = b"(null)"
    elif conv == b"S" or (conv == b"s" and size == b"w"):
        text = _wide_string(ex, value, limit)
    elif conv == b"Z":
        length, _, _, buffer = struct.unpack("<HHIQ", ex.kernel_read(value, 16))
        raw = ex.kernel_read(buffer, min(length, 2 * limit)) if length else b""
        text = _ascii(raw.decode("utf-16-le", "replace")) if size == b"w" else raw
    elif conv == b"s":
        text = ex.kernel_read_string(value) if value else b"(null)"
    elif conv == b"c":
        text = bytes([value & 0xFF])
    elif conv in (b"d", b"i"):
        text = str(value - (1 << bits) if value >> (bits - 1) else value).encode()
    elif conv == b"u":
        text = str(value).encode()
    elif conv == b"p":
        text = f"{value:016X}".encode()
    else:
        text = (f"{value:x}" if conv == b"x" else f"{value:X}").encode()
    if precision is not None and conv in (b"s", b"S", b"Z"):
        text = text[:precision]
    elif precision is not None and conv in (b"d", b"i", b"u", b"x", b"X"):
        sign, digits = (text[:1], text[1:]) if text.startswith(b"-") else (b"", text)
        text = sign + (b"" if precision == 0 and digits == b"0" else digits.rjust(precision,
                                                                                  b"0"))
        flags = flags.replace(b"0", b"")
    pad = b"0" if b"0" in flags and conv not in (b"s", b"c", b"S", b"Z") else b" "
    if b"-" in flags:
        return text.ljust(width, b" ")
    return text.rjust(width, pad)


def _wide_string(ex: KernelMemory, address: int, limit: int = DBGPRINT_LIMIT) -> bytes:
    """A NUL-terminated UTF-16 string (at most ``limit`` characters of it)."""
    raw = bytearray()
    while len(raw) < 2 * limit:
        unit = ex.kernel_read(address + len(raw), 2)
        if unit == b"\0\0":
            break
        raw += unit
    return _ascii(raw.decode("utf-16-le", "replace"))


def _ascii(text: str) -> bytes:
    return text.encode("ascii", "replace")


# -- the exports ---------------------------------------------------------------------------

@export("DbgPrint", dll="ntoskrnl.exe")
def dbg_print(ex: ExSupport, call: ExportCall) -> int:
    """ULONG DbgPrint(PCSTR Format, ...): to the console (the kernel debugger's output)."""
    ex.debug_print(format_message(ex, ex.kernel_read_string(call.arg(0)), call, 1))
    return 0


@export("KeBugCheckEx", dll="ntoskrnl.exe")
def ke_bug_check_ex(ex: KernelMemory, call: ExportCall) -> int:
    """VOID KeBugCheckEx(Code, P1, P2, P3, P4): stop the machine, on purpose."""
    code = call.arg(0) & 0xFFFF_FFFF
    raise BugCheck(code, (call.arg(1), call.arg(2), call.arg(3), call.arg(4)),
                   call_site(ex, call.return_address), "KeBugCheckEx called by a driver")


@export("ExAllocatePoolWithTag", dll="ntoskrnl.exe")
def ex_allocate_pool_with_tag(ex: ExSupport, call: ExportCall) -> int:
    """PVOID ExAllocatePoolWithTag(PoolType, NumberOfBytes, Tag): NULL if it cannot (or, with
    POOL_RAISE_IF_ALLOCATION_FAILURE in PoolType, STATUS_INSUFFICIENT_RESOURCES raised); a
    bad IRQL or a MustSucceed type is bug check 0xC2 (emu.nt.pool)."""
    pool_type = call.arg(0) & 0xFFFF_FFFF
    return allocate_pool(ex, call, pool_type & ~POOL_RAISE_IF_ALLOCATION_FAILURE, call.arg(1),
                         call.arg(2) & 0xFFFF_FFFF,
                         raise_on_failure=bool(pool_type & POOL_RAISE_IF_ALLOCATION_FAILURE))


def allocate_pool(ex: ExSupport, call: ExportCall, pool_type: int, size: int, tag: int, *,
                  raise_on_failure: bool = False) -> int:
    """The pool routines' allocation: the block, or NULL ("if there is insufficient memory in
    the free pool"), or ExceptionRaised(STATUS_INSUFFICIENT_RESOURCES) if asked to raise."""
    try:
        block = ex.pools.allocate(pool_type, size, tag, ex.irql)
    except BadPoolCall as err:
        raise bad_pool_caller(ex, call, err) from None
    except OutOfFrames:
        block = 0
    if not block and raise_on_failure:
        raise ExceptionRaised(NTSTATUS.STATUS_INSUFFICIENT_RESOURCES)
    return block


def bad_pool_caller(ex: KernelMemory, call: ExportCall, err: BadPoolCall) -> BugCheck:
    """Bug check 0xC2 BAD_POOL_CALLER with the parameters of the violation."""
    name = name_at(ex.cpu.rip) or "the pool"
    return BugCheck(BAD_POOL_CALLER, err.params, call_site(ex, call.return_address),
                    f"{name}: {err}")


@export("ExFreePoolWithTag", dll="ntoskrnl.exe")
def ex_free_pool_with_tag(ex: ExSupport, call: ExportCall) -> int:
    """VOID ExFreePoolWithTag(P, Tag): a bad free is bug check 0xC2 BAD_POOL_CALLER."""
    return free_pool(ex, call, call.arg(0), call.arg(1) & 0xFFFF_FFFF)


def free_pool(ex: ExSupport, call: ExportCall, address: int, tag: int) -> int:
    """The pool routines' free (emu.nt.pool's checks; a Tag of 0 matches any block)."""
    try:
        ex.pools.free(address, tag, ex.irql)
    except BadPoolCall as err:
        raise bad_pool_caller(ex, call, err) from None
    return 0


@export("KeGetCurrentIrql", dll="ntoskrnl.exe")
def ke_get_current_irql(ex: ExSupport, call: ExportCall) -> int:
    """KIRQL KeGetCurrentIrql(VOID): CR8, what wdm.h's x64 inline of it reads."""
    return ex.irql


# -- the I/O manager -----------------------------------------------------------------------

def read_unicode_string(ex: KernelMemory, address: int) -> str:
    """The text of a UNICODE_STRING (Length in bytes, Buffer of UTF-16)."""
    length, _, _, buffer = struct.unpack("<HHIQ", ex.kernel_read(address, 16))
    return ex.kernel_read(buffer, length).decode("utf-16-le", "replace") if length else ""


@export("IoCreateDevice", dll="ntoskrnl.exe")
def io_create_device(ex: IoSystem, call: ExportCall) -> int:
    """NTSTATUS IoCreateDevice(DriverObject, ExtensionSize, DeviceName, DeviceType,
    Characteristics, Exclusive, *DeviceObject): a NULL DeviceName makes an unnamed device
    ("DeviceName: optional", the IoCreateDevice reference); a name must be in \\Device."""
    driver = next((d for d in ex.drivers if d.driver_object == call.arg(0)), None)
    if driver is None:
        return NTSTATUS.STATUS_INVALID_PARAMETER
    name = read_unicode_string(ex, call.arg(2)) if call.arg(2) else None
    if name is not None and not name.startswith("\\Device\\"):
        return NTSTATUS.STATUS_OBJECT_NAME_INVALID
    try:
        status, device = ex.io.create_device(driver, name, call.arg(3) & 0xFFFF_FFFF,
                                             call.arg(1) & 0xFFFF_FFFF,
                                             call.arg(4) & 0xFFFF_FFFF)
    except OutOfFrames:     # no RAM for the object or its extension: Windows' status for it
        return NTSTATUS.STATUS_INSUFFICIENT_RESOURCES
    if status == NTSTATUS.STATUS_SUCCESS:
        ex.kernel_write(call.arg(6), struct.pack("<Q", device))
    return status


@export("IoDeleteDevice", dll="ntoskrnl.exe")
def io_delete_device(ex: IoSystem, call: ExportCall) -> int:
    """VOID IoDeleteDevice(DeviceObject)."""
    ex.io.delete_device(call.arg(0))
    return 0


@export("RtlInitUnicodeString", dll="ntoskrnl.exe")
def rtl_init_unicode_string(ex: KernelMemory, call: ExportCall) -> int:
    """VOID RtlInitUnicodeString(*Destination, Source): Length from the NUL-terminated text."""
    source, length = call.arg(1), 0
    if source:
        while length < 0xFFFC and ex.kernel_read(source + length, 2) != b"\0\0":
            length += 2
    ex.kernel_write(call.arg(0), struct.pack("<HHIQ", length, length + 2 if source else 0, 0,
                                             source))
    return 0


@export("IoConnectInterrupt", dll="ntoskrnl.exe")
def io_connect_interrupt(ex: IoSystem, call: ExportCall) -> int:
    """NTSTATUS IoConnectInterrupt(PKINTERRUPT *InterruptObject, PKSERVICE_ROUTINE
    ServiceRoutine, PVOID ServiceContext, PKSPIN_LOCK SpinLock, ULONG Vector, KIRQL Irql,
    KIRQL SynchronizeIrql, KINTERRUPT_MODE InterruptMode, BOOLEAN ShareVector, KAFFINITY
    ProcessorEnableMask, BOOLEAN FloatingSave): the ISR, ``BOOLEAN Isr(PKINTERRUPT,
    PVOID ServiceContext)``, runs at SynchronizeIrql when the device's line goes up and
    the IRQL is below Irql (emu.nt.kintr). STATUS_INVALID_PARAMETER for a vector no device
    uses or one already connected, an Irql not above DISPATCH_LEVEL or above HIGH_LEVEL, or
    a SynchronizeIrql below Irql (the IoConnectInterrupt reference: "SynchronizeIrql ...
    must be equal to or greater than Irql")."""
    vector = call.arg(4) & 0xFFFF_FFFF
    irql, synchronize = call.arg(5) & 0xFF, call.arg(6) & 0xFF
    if vector not in {d.vector for d in ex.cpu.devices} or vector in ex.interrupts or \
            not kintr.DISPATCH_LEVEL < irql <= synchronize <= kintr.HIGH_LEVEL:
        return NTSTATUS.STATUS_INVALID_PARAMETER
    try:
        obj = ex.pools.allocate(512, 0x40, kintr.KINTERRUPT_TAG)     # KINTERRUPT (NonPagedPoolNx)
    except OutOfFrames:     # Windows' status when the interrupt object cannot be allocated
        return NTSTATUS.STATUS_INSUFFICIENT_RESOURCES
    ex.interrupts[vector] = kintr.Interrupt(vector, call.arg(1), call.arg(2), obj, irql,
                                            synchronize)
    ex.kernel_write(call.arg(0), struct.pack("<Q", obj))
    return NTSTATUS.STATUS_SUCCESS


# -- IRQL ----------------------------------------------------------------------------------

IRQL_NOT_GREATER_OR_EQUAL = 0x09


@export("KfRaiseIrql", dll="ntoskrnl.exe")
def kf_raise_irql(ex: ExSupport, call: ExportCall) -> int:
    """KIRQL KfRaiseIrql(KIRQL NewIrql): CR8 = NewIrql, the old IRQL returned; raising to a
    lower one is bug check 0x9 IRQL_NOT_GREATER_OR_EQUAL (NewIrql, the IRQL it was, 0, 0),
    and one above HIGH_LEVEL (15, all CR8 holds) too."""
    new, old = call.arg(0) & 0xFF, ex.irql
    if new < old or new > kintr.HIGH_LEVEL:
        raise BugCheck(IRQL_NOT_GREATER_OR_EQUAL, (new, old, 0, 0),
                       call_site(ex, call.return_address), "KfRaiseIrql to a lower IRQL")
    ex.irql = new
    return old


# -- exported since the structures are wdm.h's (issue 12): registered last, so that the
# trap addresses of the exports above stay where they were.

@export("IofCompleteRequest", dll="ntoskrnl.exe")
def iof_complete_request(ex: IoSystem, call: ExportCall) -> int:
    """VOID IofCompleteRequest(Irp, PriorityBoost): what wdm.h's IoCompleteRequest macro
    calls."""
    ex.io.complete(call.arg(0), call_site(ex, call.return_address))
    return 0


@export("IoCreateSymbolicLink", dll="ntoskrnl.exe")
def io_create_symbolic_link(ex: IoSystem, call: ExportCall) -> int:
    """NTSTATUS IoCreateSymbolicLink(SymbolicLinkName, DeviceName): a name in \\DosDevices
    (\\??) that opens the device; STATUS_OBJECT_NAME_COLLISION if it exists."""
    return ex.io.create_link(read_unicode_string(ex, call.arg(0)),
                             read_unicode_string(ex, call.arg(1)))


@export("IoDeleteSymbolicLink", dll="ntoskrnl.exe")
def io_delete_symbolic_link(ex: IoSystem, call: ExportCall) -> int:
    """NTSTATUS IoDeleteSymbolicLink(SymbolicLinkName): STATUS_OBJECT_NAME_NOT_FOUND if there
    is no such link."""
    return ex.io.delete_link(read_unicode_string(ex, call.arg(0)))


# -- structured exceptions (issue 12, item 5): routines that raise, as Windows' do. The
# kernel dispatches what they raise to the calling driver's __try/__except (emu.nt.seh).
# ExceptionAddress is the return address in the driver (the routine itself has no code
# here). Registered last: the trap addresses above stay where they were.

@export("__C_specific_handler", dll="ntoskrnl.exe")
def c_specific_handler(ex: KernelMemory, call: ExportCall) -> int:
    """EXCEPTION_DISPOSITION __C_specific_handler(ExceptionRecord, EstablisherFrame,
    ContextRecord, DispatcherContext): the language handler clang names in a __try
    function's UNWIND_INFO. The dispatcher (emu.nt.seh) plays it in Python when it meets a
    frame whose handler is this import; a driver calling it itself gets
    ExceptionContinueSearch (1)."""
    return 1


@export("ExRaiseStatus", dll="ntoskrnl.exe")
def ex_raise_status(ex: KernelMemory, call: ExportCall) -> int:
    """VOID ExRaiseStatus(NTSTATUS Status): raise a noncontinuable exception with that code
    and no parameters."""
    raise ExceptionRaised(call.arg(0) & 0xFFFF_FFFF)


@export("ExRaiseAccessViolation", dll="ntoskrnl.exe")
def ex_raise_access_violation(ex: KernelMemory, call: ExportCall) -> int:
    """VOID ExRaiseAccessViolation(void): ExRaiseStatus(STATUS_ACCESS_VIOLATION)."""
    raise ExceptionRaised(NTSTATUS.STATUS_ACCESS_VIOLATION)


@export("ExRaiseDatatypeMisalignment", dll="ntoskrnl.exe")
def ex_raise_datatype_misalignment(ex: KernelMemory, call: ExportCall) -> int:
    """VOID ExRaiseDatatypeMisalignment(void): ExRaiseStatus(STATUS_DATATYPE_MISALIGNMENT)."""
    raise ExceptionRaised(NTSTATUS.STATUS_DATATYPE_MISALIGNMENT)


def _misaligned(address: int, alignment: int) -> bool:
    # "Address & (Alignment - 1)", Alignment a ULONG (1, 2, 4, 8 or 16 as documented).
    return bool(address & ((alignment - 1) & 0xFFFF_FFFF))


@export("ProbeForRead", dll="ntoskrnl.exe")
def probe_for_read_pe(ex: KernelMemory, call: ExportCall) -> int:
    """VOID ProbeForRead(Address, Length, Alignment): nothing if Length is 0; else
    STATUS_DATATYPE_MISALIGNMENT if Address is not aligned, STATUS_ACCESS_VIOLATION if the
    range wraps or ends above MmUserProbeAddress. Windows raises the latter by writing a byte
    at MmUserProbeAddress, so its information is (1 = write, MmUserProbeAddress). The pages
    are not touched: a read of an invalid user page later faults in the driver itself."""
    address, length, alignment = call.arg(0), call.arg(1), call.arg(2) & 0xFFFF_FFFF
    if length == 0:
        return 0
    if _misaligned(address, alignment):
        raise ExceptionRaised(NTSTATUS.STATUS_DATATYPE_MISALIGNMENT)
    # (Python integers do not wrap: a range that wraps past 2^64 on the CPU ends above
    # MmUserProbeAddress here, as Windows' "Address + Length < Address" catches it.)
    if address + length > layout.MM_USER_PROBE_ADDRESS:
        raise ExceptionRaised(NTSTATUS.STATUS_ACCESS_VIOLATION, (1, layout.MM_USER_PROBE_ADDRESS))
    return 0


@export("ProbeForWrite", dll="ntoskrnl.exe")
def probe_for_write_pe(ex: KernelMemory, call: ExportCall) -> int:
    """VOID ProbeForWrite(Address, Length, Alignment): as ProbeForRead (the range check
    raises STATUS_ACCESS_VIOLATION with no information: ExRaiseAccessViolation), then the
    first byte of each page is read and written back, as Windows does: a page that cannot
    be read raises STATUS_ACCESS_VIOLATION (0 = read, address), one that cannot be written
    (1 = write, address). Pages the memory manager can make valid (demand-zero, paged
    out) are, below DISPATCH_LEVEL."""
    address, length, alignment = call.arg(0), call.arg(1), call.arg(2) & 0xFFFF_FFFF
    if length == 0:
        return 0
    if _misaligned(address, alignment):
        raise ExceptionRaised(NTSTATUS.STATUS_DATATYPE_MISALIGNMENT)
    last = address + length - 1                  # no wrap in Python: see ProbeForRead
    if last >= layout.MM_USER_PROBE_ADDRESS:
        raise ExceptionRaised(NTSTATUS.STATUS_ACCESS_VIOLATION)
    at = address
    while at <= last:
        try:
            byte = ex.kernel_read(at, 1)
        except BugCheck:
            raise ExceptionRaised(NTSTATUS.STATUS_ACCESS_VIOLATION, (0, at)) from None
        try:
            ex.kernel_write(at, byte)
        except BugCheck:
            raise ExceptionRaised(NTSTATUS.STATUS_ACCESS_VIOLATION, (1, at)) from None
        at = (at & ~0xFFF) + layout.PAGE_SIZE
    return 0


@export("KeBugCheck", dll="ntoskrnl.exe")
def ke_bug_check(ex: KernelMemory, call: ExportCall) -> int:
    """VOID KeBugCheck(BugCheckCode): KeBugCheckEx(BugCheckCode, 0, 0, 0, 0)."""
    raise BugCheck(call.arg(0) & 0xFFFF_FFFF, (0, 0, 0, 0), call_site(ex, call.return_address),
                   "KeBugCheck called by a driver")


@export("RtlAssert", dll="ntoskrnl.exe")
def rtl_assert(ex: ExSupport, call: ExportCall) -> int:
    """VOID RtlAssert(FailedAssertion, FileName, LineNumber, Message): what the WDK's ASSERT
    calls when DBG is 1. Prints Windows' message, then breaks into the kernel debugger,
    as RtlAssert does with DbgBreakPoint; with no kernel debugger that breakpoint is a
    STATUS_BREAKPOINT exception, dispatched like any other (unhandled: a bug check)."""
    message = ex.kernel_read_string(call.arg(3)) if call.arg(3) else b""
    ex.debug_print(b"\n*** Assertion failed: " + message + ex.kernel_read_string(call.arg(0))
                   + b"\n***   Source File: " + ex.kernel_read_string(call.arg(1))
                   + f", line {call.arg(2) & 0xFFFF_FFFF}\n\n".encode())
    raise ExceptionRaised(NTSTATUS.STATUS_BREAKPOINT, (0,), flags=0)    # int3: continuable
