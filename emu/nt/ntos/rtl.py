"""Rtl: the run-time library's exports (strings, memory) and the C run-time routines
ntoskrnl exports, as PE drivers import them.

These routines touch the caller's memory at ring 0 exactly as their code in ntoskrnl
would: through the page tables, one page at a time, paging a pageable page in below
DISPATCH_LEVEL (MmAccessFault's rule, Executive.page_in_for_kernel). A bad pointer is the
page fault the CPU would take inside nt!memcpy: the same bug check as a driver's own
access (0x50 PAGE_FAULT_IN_NONPAGED_AREA, 0xBE for a read-only page, 0xA
IRQL_NOT_LESS_OR_EQUAL at DISPATCH_LEVEL: the faulting code is the kernel's, not the
driver's), its RIP the routine's address in nt (the export), the driver blamed as the
caller on the stack.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from emu.hw import mmu
from emu.hw.exceptions import CpuException, Vector
from emu.nt import layout, wdm
from emu.nt.exports import ExportCall, export, format_message, free_pool, name_at
from emu.nt.mm.pfn import OutOfFrames
from emu.nt.status import NTSTATUS

if TYPE_CHECKING:
    from emu.nt.interfaces import ExSupport

NTOSKRNL = "ntoskrnl.exe"
MAX_USTRING = 0xFFFE            # a UNICODE_STRING's Length is a USHORT of bytes
PAGED_POOL = 1
TAG_STRING = int.from_bytes(b"Strg", "little")  # strings Rtl allocates for the caller
STATUS_BUFFER_TOO_SMALL = 0xC000_0023
STATUS_BUFFER_OVERFLOW = 0x8000_0005
STATUS_INVALID_PARAMETER_2 = 0xC000_00F0


# -- the caller's memory, as ring-0 code in nt touches it ---------------------------------

def _physical(ex: ExSupport, va: int, access: str) -> int:
    """The physical address of ``va`` for a ring-0 ``access``; a fault is the bug check the
    CPU's page fault at this export's RIP would give (see the module docstring)."""
    va &= 0xFFFF_FFFF_FFFF_FFFF
    try:
        return ex.kernel_walk(va, access)
    except mmu.PageFault as fault:
        ex.cpu.set_reg("cr2", fault.address)        # what the CPU's #PF leaves (SDM 4.7)
        exc = CpuException(Vector.PF, ex.cpu.rip, 0, error_code=int(fault.error_code),
                           address=fault.address, access=access, reason=fault.reason,
                           walk=fault.steps)
    except mmu.GeneralProtection as fault:
        exc = CpuException(Vector.GP, ex.cpu.rip, 0, address=fault.address, access=access,
                           reason=f"non-canonical address {fault.address:#x}")
    raise ex.bugcheck_for(exc, f"(in nt!{name_at(ex.cpu.rip) or 'Rtl'})")


def read(ex: ExSupport, va: int, n: int) -> bytes:
    """``n`` bytes at ``va``, read page by page in address order."""
    out = bytearray()
    while len(out) < n:
        at = va + len(out)
        chunk = min(n - len(out), layout.PAGE_SIZE - (at & 0xFFF))
        out += ex.mem.read(_physical(ex, at, "read"), chunk)
    return bytes(out)


def write(ex: ExSupport, va: int, data: bytes) -> None:
    """Store ``data`` at ``va``, page by page in address order."""
    done = 0
    while done < len(data):
        at = va + done
        chunk = min(len(data) - done, layout.PAGE_SIZE - (at & 0xFFF))
        ex.mem.write(_physical(ex, at, "write"), data[done:done + chunk])
        done += chunk


def _chunks(va: int, n: int, *others: int):
    """(offset, length) pieces of ``n`` bytes from ``va`` (and from each of ``others``)
    that cross no page boundary of any of them: each piece touches one page of each."""
    done = 0
    while done < n:
        piece = n - done
        for base in (va, *others):
            piece = min(piece, layout.PAGE_SIZE - ((base + done) & 0xFFF))
        yield done, piece
        done += piece


def _chunks_back(va: int, n: int, *others: int):
    """The pieces of _chunks, last first."""
    left = n
    while left > 0:
        piece = left
        for base in (va, *others):
            piece = min(piece, ((base + left - 1) & 0xFFF) + 1)
        left -= piece
        yield left, piece


def copy(ex: ExSupport, dest: int, source: int, n: int) -> None:
    """Copy ``n`` bytes as a forward loop does (memmove of overlapping ranges with dest above
    source goes backwards, as memmove must): a page is touched only when the copy reaches
    it, so the first bad page faults first, and no buffer of ``n`` bytes is ever held."""
    backwards = source < dest < source + n
    for offset, piece in (_chunks_back if backwards else _chunks)(dest, n, source):
        data = ex.mem.read(_physical(ex, source + offset, "read"), piece)
        ex.mem.write(_physical(ex, dest + offset, "write"), data)


def fill(ex: ExSupport, dest: int, byte: int, n: int) -> None:
    """Store ``n`` copies of ``byte`` from ``dest``, page by page."""
    for offset, piece in _chunks(dest, n):
        ex.mem.write(_physical(ex, dest + offset, "write"), bytes([byte]) * piece)


def mismatch(ex: ExSupport, a: int, b: int, n: int) -> int | None:
    """The offset of the first byte that differs in two ranges of ``n`` bytes, or None:
    compared page by page, and nothing past the first difference is touched."""
    for offset, piece in _chunks(a, n, b):
        x = ex.mem.read(_physical(ex, a + offset, "read"), piece)
        y = ex.mem.read(_physical(ex, b + offset, "read"), piece)
        if x != y:
            return offset + next(i for i in range(piece) if x[i] != y[i])
    return None


def read_string(ex: ExSupport, va: int, unit: int = 1, limit: int | None = None) -> bytes:
    """A string of ``unit``-byte characters up to its NUL (excluded), or ``limit``
    characters: each page is touched only when the string reaches it."""
    out = bytearray()
    while limit is None or len(out) < limit * unit:
        at = va + len(out)
        chunk = layout.PAGE_SIZE - (at & 0xFFF)
        if limit is not None:
            chunk = min(chunk, limit * unit - len(out))
        data = ex.mem.read(_physical(ex, at, "read"), chunk)
        for i in range(0, len(data) - unit + 1, unit):
            if data[i:i + unit] == bytes(unit):
                return bytes(out + data[:i])
        out += data
    return bytes(out)


def _counted(ex: ExSupport, address: int) -> tuple[int, int, int]:
    """(Length, MaximumLength, Buffer) of a UNICODE_STRING or STRING."""
    length, maximum, _, buffer = struct.unpack("<HHIQ", read(ex, address, 16))
    return length, maximum, buffer


def _set_counted(ex: ExSupport, address: int, length: int, maximum: int, buffer: int) -> None:
    write(ex, address, struct.pack("<HH4xQ", length, maximum, buffer))


def _set_length(ex: ExSupport, address: int, length: int) -> None:
    write(ex, address + wdm.UNICODE_STRING["Length"], struct.pack("<H", length))


def _sign(value: int) -> int:
    """-1, 0 or 1 as a 32-bit int (what MSVC's CRT comparisons return)."""
    return (-1 if value < 0 else 1 if value > 0 else 0) & 0xFFFF_FFFF


def _compare(a: bytes | list[int], b: bytes | list[int]) -> int:
    """C's comparison of two sequences of unsigned characters."""
    for x, y in zip(a, b, strict=False):
        if x != y:
            return _sign(x - y)
    return _sign(len(a) - len(b))


# -- the C run-time routines ---------------------------------------------------------------

@export("memcpy", dll=NTOSKRNL)
def rtl_memcpy(ex: ExSupport, call: ExportCall) -> int:
    """void *memcpy(void *dest, const void *src, size_t count): dest."""
    copy(ex, call.arg(0), call.arg(1), call.arg(2))
    return call.arg(0)


@export("memmove", dll=NTOSKRNL)
def rtl_memmove(ex: ExSupport, call: ExportCall) -> int:
    """void *memmove(void *dest, const void *src, size_t count): dest; overlapping ranges
    copy as if through a temporary buffer."""
    copy(ex, call.arg(0), call.arg(1), call.arg(2))
    return call.arg(0)


@export("memset", dll=NTOSKRNL)
def rtl_memset(ex: ExSupport, call: ExportCall) -> int:
    """void *memset(void *dest, int c, size_t count): dest."""
    fill(ex, call.arg(0), call.arg(1) & 0xFF, call.arg(2))
    return call.arg(0)


@export("memcmp", dll=NTOSKRNL)
def rtl_memcmp(ex: ExSupport, call: ExportCall) -> int:
    """int memcmp(const void *buf1, const void *buf2, size_t count): -1, 0 or 1 by the
    first differing byte (unsigned)."""
    a, b = call.arg(0), call.arg(1)
    at = mismatch(ex, a, b, call.arg(2))
    if at is None:
        return 0
    return _sign(read(ex, a + at, 1)[0] - read(ex, b + at, 1)[0])


@export("strlen", dll=NTOSKRNL)
def rtl_strlen(ex: ExSupport, call: ExportCall) -> int:
    """size_t strlen(const char *str)."""
    return len(read_string(ex, call.arg(0)))


@export("wcslen", dll=NTOSKRNL)
def rtl_wcslen(ex: ExSupport, call: ExportCall) -> int:
    """size_t wcslen(const wchar_t *str): in characters."""
    return len(read_string(ex, call.arg(0), 2)) // 2


@export("strcmp", dll=NTOSKRNL)
def rtl_strcmp(ex: ExSupport, call: ExportCall) -> int:
    """int strcmp(const char *string1, const char *string2): -1, 0 or 1."""
    return _compare(read_string(ex, call.arg(0)), read_string(ex, call.arg(1)))


@export("strncmp", dll=NTOSKRNL)
def rtl_strncmp(ex: ExSupport, call: ExportCall) -> int:
    """int strncmp(const char *string1, const char *string2, size_t count): at most count
    characters compared."""
    n = call.arg(2)
    return _compare(read_string(ex, call.arg(0), limit=n), read_string(ex, call.arg(1), limit=n))


def _wide(data: bytes) -> list[int]:
    return list(struct.unpack(f"<{len(data) // 2}H", data))


@export("wcscmp", dll=NTOSKRNL)
def rtl_wcscmp(ex: ExSupport, call: ExportCall) -> int:
    """int wcscmp(const wchar_t *string1, const wchar_t *string2): -1, 0 or 1."""
    return _compare(_wide(read_string(ex, call.arg(0), 2)), _wide(read_string(ex, call.arg(1), 2)))


def _lower_ascii(data: bytes) -> bytes:
    return data.lower()         # bytes.lower: A-Z only, the "C" locale's tolower


@export("_stricmp", dll=NTOSKRNL)
def rtl_stricmp(ex: ExSupport, call: ExportCall) -> int:
    """int _stricmp(const char *string1, const char *string2): compared as lowercase (the C
    locale: only A-Z fold)."""
    return _compare(_lower_ascii(read_string(ex, call.arg(0))),
                    _lower_ascii(read_string(ex, call.arg(1))))


def _fold(units: list[int], fold) -> list[int]:
    """Each UTF-16 unit folded by ``fold`` (str.lower/str.upper) when it maps to one unit."""
    out = []
    for u in units:
        folded = fold(chr(u)) if u < 0xD800 or u > 0xDFFF else chr(u)
        out.append(ord(folded) if len(folded) == 1 and ord(folded) <= 0xFFFF else u)
    return out


@export("_wcsicmp", dll=NTOSKRNL)
def rtl_wcsicmp(ex: ExSupport, call: ExportCall) -> int:
    """int _wcsicmp(const wchar_t *string1, const wchar_t *string2): compared as lowercase."""
    return _compare(_fold(_wide(read_string(ex, call.arg(0), 2)), str.lower),
                    _fold(_wide(read_string(ex, call.arg(1), 2)), str.lower))


@export("strcpy", dll=NTOSKRNL)
def rtl_strcpy(ex: ExSupport, call: ExportCall) -> int:
    """char *strcpy(char *dest, const char *src): dest; the NUL copied too."""
    write(ex, call.arg(0), read_string(ex, call.arg(1)) + b"\0")
    return call.arg(0)


@export("strncpy", dll=NTOSKRNL)
def rtl_strncpy(ex: ExSupport, call: ExportCall) -> int:
    """char *strncpy(char *dest, const char *src, size_t count): dest; exactly count bytes
    written, NUL padded (no NUL when src has count characters or more)."""
    n = call.arg(2)
    text = read_string(ex, call.arg(1), limit=n)
    write(ex, call.arg(0), text)
    fill(ex, call.arg(0) + len(text), 0, n - len(text))
    return call.arg(0)


class _VaList:
    """The arguments a va_list points at: on x64 each one an 8-byte slot, in order."""

    def __init__(self, ex: ExSupport, pointer: int, first: int) -> None:
        self.ex, self.pointer, self.first = ex, pointer, first

    def arg(self, i: int) -> int:
        return int.from_bytes(read(self.ex, self.pointer + 8 * (i - self.first), 8), "little")


# _snprintf formats no more than one byte past ``count`` (enough to tell that the text is
# longer), and never more than the largest pool block: a %999999999d costs nothing.
SNPRINTF_LIMIT = 16 << 20


def _snprintf(ex: ExSupport, buffer: int, count: int, fmt: int, args, first: int) -> int:
    """MSVC's _snprintf: at most ``count`` bytes stored; the length when it fits (a NUL
    added if there is room), -1 when the text is longer than ``count`` (no NUL). Unlike
    DbgPrint, no 512-byte limit: the _snprintf reference has none."""
    text = format_message(ex, read_string(ex, fmt), args, first,
                          min(count, SNPRINTF_LIMIT) + 1)
    write(ex, buffer, text[:count] + (b"\0" if len(text) < count else b""))
    return (len(text) if len(text) <= count else -1) & 0xFFFF_FFFF


@export("_snprintf", dll=NTOSKRNL)
def rtl_snprintf(ex: ExSupport, call: ExportCall) -> int:
    """int _snprintf(char *buffer, size_t count, const char *format, ...): the formats of
    DbgPrint."""
    return _snprintf(ex, call.arg(0), call.arg(1), call.arg(2), call, 3)


@export("_vsnprintf", dll=NTOSKRNL)
def rtl_vsnprintf(ex: ExSupport, call: ExportCall) -> int:
    """int _vsnprintf(char *buffer, size_t count, const char *format, va_list argptr): as
    _snprintf, the arguments from the va_list."""
    return _snprintf(ex, call.arg(0), call.arg(1), call.arg(2), _VaList(ex, call.arg(3), 0), 0)


# -- Rtl: memory and counted strings ---------------------------------------------------------

@export("RtlCompareMemory", dll=NTOSKRNL)
def rtl_compare_memory(ex: ExSupport, call: ExportCall) -> int:
    """SIZE_T RtlCompareMemory(Source1, Source2, Length): how many bytes match before the
    first difference (Length if all do)."""
    at = mismatch(ex, call.arg(0), call.arg(1), call.arg(2))
    return call.arg(2) if at is None else at


def _init_counted(ex: ExSupport, call: ExportCall, unit: int, cap: int) -> int:
    """RtlInit*String: Length = the NUL-terminated text's bytes (at most ``cap``),
    MaximumLength = Length + the NUL, Buffer = Source; all 0 for a NULL Source."""
    source = call.arg(1)
    length = len(read_string(ex, source, unit, limit=cap // unit)) if source else 0
    _set_counted(ex, call.arg(0), length, length + unit if source else 0, source)
    return 0


@export("RtlInitAnsiString", dll=NTOSKRNL)
def rtl_init_ansi_string(ex: ExSupport, call: ExportCall) -> int:
    """VOID RtlInitAnsiString(PANSI_STRING DestinationString, PCSZ SourceString)."""
    return _init_counted(ex, call, 1, MAX_USTRING)


@export("RtlInitString", dll=NTOSKRNL)
def rtl_init_string(ex: ExSupport, call: ExportCall) -> int:
    """VOID RtlInitString(PSTRING DestinationString, PCSZ SourceString)."""
    return _init_counted(ex, call, 1, MAX_USTRING)


def _text(ex: ExSupport, address: int) -> list[int]:
    """A UNICODE_STRING's UTF-16 units."""
    length, _, buffer = _counted(ex, address)
    return _wide(read(ex, buffer, length & ~1))


@export("RtlCopyUnicodeString", dll=NTOSKRNL)
def rtl_copy_unicode_string(ex: ExSupport, call: ExportCall) -> int:
    """VOID RtlCopyUnicodeString(Destination, Source): as much of Source as Destination's
    MaximumLength holds, NUL-terminated if there is room; a NULL Source makes Destination
    empty (Length 0)."""
    dest, source = call.arg(0), call.arg(1)
    if not source:
        _set_length(ex, dest, 0)
        return 0
    length, _, buffer = _counted(ex, source)
    _, maximum, target = _counted(ex, dest)
    n = min(length, maximum) & ~1
    write(ex, target, read(ex, buffer, n) + (b"\0\0" if n + 2 <= maximum else b""))
    _set_length(ex, dest, n)
    return 0


def _append(ex: ExSupport, dest: int, data: bytes) -> int:
    """Append ``data`` (UTF-16) to Destination: STATUS_BUFFER_TOO_SMALL, Destination
    untouched, if it does not fit; NUL-terminated when there is room."""
    length, maximum, buffer = _counted(ex, dest)
    if length + len(data) > maximum:
        return STATUS_BUFFER_TOO_SMALL
    end = length + len(data)
    write(ex, buffer + length, data + (b"\0\0" if end + 2 <= maximum else b""))
    _set_length(ex, dest, end)
    return NTSTATUS.STATUS_SUCCESS


@export("RtlAppendUnicodeToString", dll=NTOSKRNL)
def rtl_append_unicode_to_string(ex: ExSupport, call: ExportCall) -> int:
    """NTSTATUS RtlAppendUnicodeToString(Destination, PCWSTR Source): a NULL Source appends
    nothing."""
    if not call.arg(1):
        return NTSTATUS.STATUS_SUCCESS
    return _append(ex, call.arg(0), read_string(ex, call.arg(1), 2, limit=MAX_USTRING // 2))


@export("RtlAppendUnicodeStringToString", dll=NTOSKRNL)
def rtl_append_unicode_string_to_string(ex: ExSupport, call: ExportCall) -> int:
    """NTSTATUS RtlAppendUnicodeStringToString(Destination, PCUNICODE_STRING Source)."""
    length, _, buffer = _counted(ex, call.arg(1))
    return _append(ex, call.arg(0), read(ex, buffer, length & ~1))


def _case_fold(units: list[int], insensitive: bool) -> list[int]:
    # RtlUpcaseUnicodeChar: the comparison folds to upper case.
    return _fold(units, str.upper) if insensitive else units


@export("RtlEqualUnicodeString", dll=NTOSKRNL)
def rtl_equal_unicode_string(ex: ExSupport, call: ExportCall) -> int:
    """BOOLEAN RtlEqualUnicodeString(String1, String2, CaseInSensitive): TRUE if equal."""
    insensitive = bool(call.arg(2) & 0xFF)
    return int(_case_fold(_text(ex, call.arg(0)), insensitive) ==
               _case_fold(_text(ex, call.arg(1)), insensitive))


@export("RtlCompareUnicodeString", dll=NTOSKRNL)
def rtl_compare_unicode_string(ex: ExSupport, call: ExportCall) -> int:
    """LONG RtlCompareUnicodeString(String1, String2, CaseInSensitive): the difference of the
    first differing characters, else of the Lengths (< 0, 0, > 0 as the reference says)."""
    insensitive = bool(call.arg(2) & 0xFF)
    a = _case_fold(_text(ex, call.arg(0)), insensitive)
    b = _case_fold(_text(ex, call.arg(1)), insensitive)
    diff = next((x - y for x, y in zip(a, b, strict=False) if x != y), 2 * (len(a) - len(b)))
    return diff & 0xFFFF_FFFF


def _ansi_decode(data: bytes) -> str:
    """The ANSI code page (1252); its five unassigned bytes map to U+0081 etc., as
    Windows' table maps them."""
    return "".join(bytes([b]).decode("cp1252", errors="ignore") or chr(b) for b in data)


@export("RtlAnsiStringToUnicodeString", dll=NTOSKRNL)
def rtl_ansi_string_to_unicode_string(ex: ExSupport, call: ExportCall) -> int:
    """NTSTATUS RtlAnsiStringToUnicodeString(Destination, PCANSI_STRING Source,
    AllocateDestinationString): code page 1252 to UTF-16, always NUL-terminated. A result
    of more than 0xFFFE bytes with its NUL: STATUS_INVALID_PARAMETER_2. Allocating: a
    PagedPool buffer of Length + 2 bytes (RtlFreeUnicodeString frees it), STATUS_NO_MEMORY
    if none; else STATUS_BUFFER_OVERFLOW when Destination's MaximumLength has no room for
    the text and its NUL (Length is set all the same, as Windows does)."""
    dest = call.arg(0)
    length, _, buffer = _counted(ex, call.arg(1))
    data = _ansi_decode(read(ex, buffer, length)).encode("utf-16-le")
    if len(data) + 2 > 0xFFFF:
        return STATUS_INVALID_PARAMETER_2
    _set_length(ex, dest, len(data))
    if call.arg(2) & 0xFF:
        try:
            target = ex.pools.allocate(PAGED_POOL, len(data) + 2, TAG_STRING)
        except OutOfFrames:
            return NTSTATUS.STATUS_NO_MEMORY
        _set_counted(ex, dest, len(data), len(data) + 2, target)
    else:
        _, maximum, target = _counted(ex, dest)
        if len(data) >= maximum:
            return STATUS_BUFFER_OVERFLOW
    write(ex, target, data + b"\0\0")
    return NTSTATUS.STATUS_SUCCESS


@export("RtlFreeUnicodeString", dll=NTOSKRNL)
def rtl_free_unicode_string(ex: ExSupport, call: ExportCall) -> int:
    """VOID RtlFreeUnicodeString(UnicodeString): frees the Buffer an Rtl routine allocated
    (as ExFreePool: a pointer that is no pool block is bug check 0xC2) and zeroes the
    string."""

    _, _, buffer = _counted(ex, call.arg(0))
    if buffer:
        free_pool(ex, call, buffer, 0)          # ExFreePool's checks and 0xC2 parameters
    _set_counted(ex, call.arg(0), 0, 0, 0)
    return 0
