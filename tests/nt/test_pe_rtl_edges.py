"""Edge cases of the string, C run-time and MDL routines as docs/drivers.md states them
("Strings and memory", "MDLs"), each seen by a driver built from C against the WDK's
<ntddk.h> only (``emu build-driver``) and run with ``emu run --driver``: what it prints
is what the routines gave it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import emurun
import pesource
import pytest

# _snprintf/_vsnprintf at, under and over count; RtlInit*String's limits;
# RtlAnsiStringToUnicodeString's overflow rules; RtlAppendUnicode*'s.
PESTR = r"""
#include <ntddk.h>
#include <stdarg.h>
#include <stdio.h>

static int vf(char *b, size_t n, const char *f, ...)
{ va_list a; int r; va_start(a, f); r = _vsnprintf(b, n, f, a); va_end(a); return r; }

static volatile size_t N0 = 0, N3 = 3, N5 = 5, N6 = 6;
static WCHAR big[0x8002];
static char bigA[0x10002];
static char out[1000];

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    char buf[16];
    UNICODE_STRING u, v;
    ANSI_STRING a;
    WCHAR wb[8];
    NTSTATUS s;
    int n, i;

    UNREFERENCED_PARAMETER(DriverObject);
    UNREFERENCED_PARAMETER(RegistryPath);
    memset(buf, '#', sizeof buf); buf[15] = 0;
    n = _snprintf(buf, N5, "%s", "abcde");
    DbgPrint("pestr: exact %d [%.8s]\n", n, buf);
    memset(buf, '#', sizeof buf); buf[15] = 0;
    n = _snprintf(buf, N3, "%s", "abcde");
    DbgPrint("pestr: longer %d [%.8s]\n", n, buf);
    memset(buf, '#', sizeof buf); buf[15] = 0;
    n = _snprintf(buf, N6, "%s", "abcde");
    DbgPrint("pestr: shorter %d [%.8s]\n", n, buf);
    memset(buf, '#', sizeof buf); buf[15] = 0;
    n = _snprintf(buf, N0, "%s", "abc");
    DbgPrint("pestr: count 0 %d [%.8s]\n", n, buf);
    n = vf(buf, N3, "%d", 12345);
    DbgPrint("pestr: vsnprintf %d\n", n);
    for (i = 0; i < 600; i++) bigA[i] = 'x';
    n = _snprintf(out, sizeof out, "%s", bigA);
    DbgPrint("pestr: 600 characters %d %d\n", n, (int)strlen(out));
    n = _snprintf(out, sizeof out, "%700d", 7);
    DbgPrint("pestr: width 700 %d\n", n);

    for (i = 0; i < 0x8001; i++) big[i] = L'a';
    RtlInitUnicodeString(&u, big);
    DbgPrint("pestr: init 0x8001 %x %x\n", u.Length, u.MaximumLength);
    big[0x7FFE] = 0;
    RtlInitUnicodeString(&u, big);
    DbgPrint("pestr: init 0x7ffe %x %x\n", u.Length, u.MaximumLength);
    big[0x7FFD] = 0;
    RtlInitUnicodeString(&u, big);
    DbgPrint("pestr: init 0x7ffd %x %x\n", u.Length, u.MaximumLength);
    for (i = 0; i < 0x10001; i++) bigA[i] = 'a';
    RtlInitAnsiString(&a, bigA);
    DbgPrint("pestr: init ansi 0x10001 %x %x\n", a.Length, a.MaximumLength);

    RtlInitAnsiString(&a, "abcd");
    v.Buffer = wb; v.Length = 0;
    for (i = 7; i <= 10; i++) {
        RtlFillMemory(wb, sizeof wb, 0x23);
        v.MaximumLength = (USHORT)i;
        s = RtlAnsiStringToUnicodeString(&v, &a, FALSE);
        DbgPrint("pestr: a2u max %d %08x length %u nul %d\n", i, s, v.Length, wb[4] == 0);
    }
    a.Buffer = bigA; a.Length = a.MaximumLength = 0x7FFF;
    v.Length = 0x11;
    s = RtlAnsiStringToUnicodeString(&v, &a, TRUE);
    DbgPrint("pestr: a2u 0x7fff %08x length %x\n", s, v.Length);
    a.Length = a.MaximumLength = 0x7FFE;
    s = RtlAnsiStringToUnicodeString(&v, &a, TRUE);
    DbgPrint("pestr: a2u 0x7ffe %08x %x %x\n", s, v.Length, v.MaximumLength);
    RtlFreeUnicodeString(&v);

    v.Buffer = wb; v.MaximumLength = 8; v.Length = 0;
    RtlFillMemory(wb, sizeof wb, 0x23);
    s = RtlAppendUnicodeToString(&v, L"abc");
    DbgPrint("pestr: append %08x %u nul %d\n", s, v.Length, wb[3] == 0);
    s = RtlAppendUnicodeToString(&v, L"d");
    DbgPrint("pestr: append %08x %u nul %d\n", s, v.Length, wb[4] == 0);
    s = RtlAppendUnicodeToString(&v, L"e");
    DbgPrint("pestr: append %08x %u\n", s, v.Length);
    RtlInitUnicodeString(&u, L"z");
    s = RtlAppendUnicodeStringToString(&v, &u);
    DbgPrint("pestr: append string %08x %u\n", s, v.Length);
    {
        UNICODE_STRING x, y;
        RtlInitUnicodeString(&x, L"a_");
        RtlInitUnicodeString(&y, L"aB");
        DbgPrint("pestr: compare %d %d\n", RtlCompareUnicodeString(&x, &y, FALSE),
                 RtlCompareUnicodeString(&x, &y, TRUE));
        RtlInitUnicodeString(&y, L"a");
        DbgPrint("pestr: compare lengths %d\n", RtlCompareUnicodeString(&x, &y, TRUE));
    }
    return STATUS_UNSUCCESSFUL;
}
"""

# IoAllocateMdl's Size, ByteCount and ByteOffset (wdm.h's inlines read them).
PEMDLSIZE = r"""
#include <ntddk.h>

static void Show(const char *what, PMDL m)
{
    DbgPrint("pemdlsize: %s size %x flags %x count %x offset %x\n", what, m->Size,
             m->MdlFlags, MmGetMdlByteCount(m), MmGetMdlByteOffset(m));
    IoFreeMdl(m);
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    PUCHAR p = ExAllocatePoolWithTag(NonPagedPoolNx, 0x3000, 'tseT');

    UNREFERENCED_PARAMETER(DriverObject);
    UNREFERENCED_PARAMETER(RegistryPath);
    Show("zero at a page", IoAllocateMdl(p, 0, FALSE, FALSE, NULL));
    Show("zero inside a page", IoAllocateMdl(p + 0x10, 0, FALSE, FALSE, NULL));
    Show("one byte", IoAllocateMdl(p, 1, FALSE, FALSE, NULL));
    Show("straddling", IoAllocateMdl(p + 0xFF0, 0x20, FALSE, FALSE, NULL));
    Show("17 pages", IoAllocateMdl(p, 17 * PAGE_SIZE, FALSE, FALSE, NULL));
    Show("18 pages", IoAllocateMdl(p + 1, 17 * PAGE_SIZE, FALSE, FALSE, NULL));
    Show("quota", IoAllocateMdl(p, PAGE_SIZE, FALSE, TRUE, NULL));
    DbgPrint("pemdlsize: 4 GiB - PAGE_SIZE + 1 %p\n",
             IoAllocateMdl(p, 0xFFFFF001u, FALSE, FALSE, NULL));
    ExFreePoolWithTag(p, 'tseT');
    return STATUS_UNSUCCESSFUL;
}
"""

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    return pesource.build_sources(tmp_path_factory.mktemp("drivers"),
                                  {"pestr": PESTR, "pemdlsize": PEMDLSIZE})


def run(driver: Path, apps: Path, prefix: str) -> list[str]:
    done: subprocess.CompletedProcess = emurun.emu("run", "--driver", str(driver),
                                                   str(apps / "hello"), cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return [line[len(prefix):] for line in done.stdout.splitlines()
            if line.startswith(prefix)]


def test_snprintf_returns_and_terminates_as_the_reference_says(built, apps):
    """_snprintf: the length and a NUL when shorter than count, the length and no NUL when
    exactly count, -1 and count bytes when longer; and no 512-byte limit (DbgPrint's)."""
    lines = run(built["pestr"], apps, "pestr: ")
    assert lines[:7] == ["exact 5 [abcde###]", "longer -1 [abc#####]", "shorter 5 [abcde]",
                         "count 0 -1 [########]", "vsnprintf -1",
                         "600 characters 600 600", "width 700 700"]


def test_rtl_init_string_limits(built, apps):
    lines = run(built["pestr"], apps, "pestr: ")
    assert lines[7:11] == ["init 0x8001 fffc fffe", "init 0x7ffe fffc fffe",
                           "init 0x7ffd fffa fffc", "init ansi 0x10001 fffe ffff"]


def test_ansi_to_unicode_overflow_and_append_statuses(built, apps):
    """Without Allocate: STATUS_BUFFER_OVERFLOW when MaximumLength is not above the text's
    bytes (Length set all the same), else the text and a NUL at Length; 0x7FFF characters
    is STATUS_INVALID_PARAMETER_2. Appending past MaximumLength: STATUS_BUFFER_TOO_SMALL."""
    lines = run(built["pestr"], apps, "pestr: ")
    assert lines[11:] == [
        "a2u max 7 80000005 length 8 nul 0", "a2u max 8 80000005 length 8 nul 0",
        "a2u max 9 00000000 length 8 nul 1", "a2u max 10 00000000 length 8 nul 1",
        "a2u 0x7fff c00000f0 length 11", "a2u 0x7ffe 00000000 fffc fffe",
        "append 00000000 6 nul 1", "append 00000000 8 nul 0", "append c0000023 8",
        "append string c0000023 8",
        "compare 29 29", "compare lengths 2"]


def test_io_allocate_mdl_sizes_as_mm_initialize_mdl_counts_pages(built, apps):
    """Size = 0x30 + 8 x ADDRESS_AND_SIZE_TO_SPAN_PAGES: 0x30 for a zero-length buffer at a
    page boundary; MDL_ALLOCATED_FIXED_SIZE up to 17 pages without quota; NULL past
    4 GiB - PAGE_SIZE."""
    lines = run(built["pemdlsize"], apps, "pemdlsize: ")
    assert lines == ["zero at a page size 30 flags 8 count 0 offset 0",
                     "zero inside a page size 38 flags 8 count 0 offset 10",
                     "one byte size 38 flags 8 count 1 offset 0",
                     "straddling size 40 flags 8 count 20 offset ff0",
                     "17 pages size b8 flags 8 count 11000 offset 0",
                     "18 pages size c0 flags 0 count 11000 offset 1",
                     "quota size 38 flags 0 count 1000 offset 0",
                     "4 GiB - PAGE_SIZE + 1 0000000000000000"]
