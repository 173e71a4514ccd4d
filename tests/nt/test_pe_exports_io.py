"""The Ex/Io/Mm/Ps exports a small real driver uses (issue 12, item 4), each called from a PE
driver that includes only the WDK's <ntddk.h> (guest/drivers-pe/pepool*.c, pemdl*.c,
peps*.c, pedbg*.c): what the driver prints, the bytes it leaves, and the bug checks
Windows gives for each misuse, with Microsoft's parameters."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import emurun
import pytest

from emu.hw import mmu
from emu.nt import exports, layout, ntos  # noqa: F401 (ntos registers the exports)
from emu.nt.bugcheck import BugCheckCode

ROOT = Path(__file__).resolve().parents[2]
DRIVERS = ROOT / "guest" / "build" / "drivers"
STATUS_INSUFFICIENT_RESOURCES = 0xC000_009A


def run_driver(machine_factory, apps, name: str, *commands, irql: int | None = None,
               **options):
    """Boot with guest/build/drivers/NAME.sys (DriverEntry at ``irql`` when given, as if the
    caller had raised it) and one process per command: (machine, processes, result, the
    DbgPrint output as text)."""
    m = machine_factory(**options)
    m.add_driver(DRIVERS / f"{name}.sys")
    if irql is not None:
        m.executive.irql = irql
    procs = [m.spawn(apps / app, list(args)) for app, *args in commands]
    r = m.run()
    return m, procs, r, bytes(m.executive.debug_output).decode()


def lines_of(out: str, driver: str) -> list[str]:
    prefix = f"{driver}.sys: "
    return [line[len(prefix):] for line in out.splitlines() if line.startswith(prefix)]


def present(ex, va: int) -> bool:
    """Whether ring 0 can read ``va`` in the system address space now."""
    try:
        mmu.walk(ex.mem, va, "read", cr3=ex.mm.system.cr3, cpl=0, cr0=ex.cpu.cr0,
                 cr4=ex.cpu.cr4, efer=ex.cpu.efer)
    except (mmu.PageFault, mmu.GeneralProtection):
        return False
    return True


def hexes(text: str) -> list[int]:
    return [int(h, 16) for h in re.findall(r"\b[0-9A-F]{16}\b", text)]


# -- 1. pool -------------------------------------------------------------------------------

def test_each_pool_type_gives_a_block_in_its_own_pool(machine_factory, apps):
    m, (p,), r, out = run_driver(machine_factory, apps, "pepool", ("hello",))
    assert r.bugcheck is None and p.output == b"Hello, world!\n"
    lines = lines_of(out, "pepool")
    nx, np_ = hexes(lines[0])
    (paged,) = hexes(lines[1])
    assert layout.KERNEL_POOL_NX <= nx < layout.KERNEL_POOL_NX + layout.KERNEL_POOL_SIZE
    assert layout.KERNEL_POOL <= np_ < layout.KERNEL_POOL_NX
    assert layout.KERNEL_POOL_PAGED <= paged < layout.KERNEL_POOL_SIZE + layout.KERNEL_POOL_PAGED
    assert nx % 16 == np_ % 16 == paged % 16 == 0
    # The driver filled its NonPagedPoolNx block with 0xA5: the bytes are in guest memory.
    assert m.executive.kernel_read(nx, 24) == b"\xa5" * 24
    blocks = m.executive.pools.blocks
    assert (blocks[nx].tag, blocks[nx].size) == (int.from_bytes(b"Pool", "little"), 24)
    # "If NumberOfBytes is PAGE_SIZE or greater, a page-aligned buffer is allocated";
    # smaller ones do not cross a page; every block starts zeroed.
    assert lines[2] == "0x1800 bytes at page offset 0, zeroed 1; 0x100 bytes in one page 1"
    # An unknown POOL_TYPE (3) and more than the pool gives: NULL.
    assert lines[3] == "bad pool type 0000000000000000, too big 0000000000000000"
    assert lines[4] == "ExAllocatePool ok"
    assert lines[-1] == "freed"
    # ExAllocatePool gives the tag 'None'; all freed with their tags (or 0, or ExFreePool).
    assert any(b.tag == int.from_bytes(b"None", "little") for b in blocks.values())
    assert all(b.freed for b in blocks.values() if b.tag in (0x6C6F6F50, 0x656E6F4E))


def test_ex_allocate_pool2_found_by_mm_get_system_routine_address(machine_factory, apps):
    _, _, r, out = run_driver(machine_factory, apps, "pepool", ("hello",))
    lines = lines_of(out, "pepool")
    assert r.bugcheck is None
    nx, paged, executable = hexes(lines[5])[:3]
    assert layout.KERNEL_POOL_NX <= nx < layout.KERNEL_POOL_PAGED         # POOL_FLAG_NON_PAGED
    assert layout.KERNEL_POOL_PAGED <= paged < layout.KERNEL_SYSTEM_PTES  # POOL_FLAG_PAGED
    assert layout.KERNEL_POOL <= executable < layout.KERNEL_POOL_NX       # NON_PAGED_EXECUTE
    # Zeroed; POOL_FLAG_CACHE_ALIGNED on a 64-byte boundary; an optional flag (high 32 bits)
    # it does not know does not fail the call.
    assert lines[5].endswith("zeroed 1, cache-aligned 1, optional ok")
    # NULL for a tag of 0, invalid flags (two pools, none, session pool), no memory.
    assert lines[6] == ("ExAllocatePool2 tag 0 0000000000000000, two pools 0000000000000000, "
                        "no pool 0000000000000000, session 0000000000000000, "
                        "too big 0000000000000000")
    assert lines[7] == "MmGetSystemRoutineAddress(NoSuchRoutine) 0000000000000000"
    assert exports.pe_address_of("ntoskrnl.exe", "ExAllocatePool2") is not None


def test_raise_on_failure_raises_insufficient_resources(machine_factory, apps):
    # No __try/__except around it, in DriverEntry's system thread:
    # SYSTEM_THREAD_EXCEPTION_NOT_HANDLED (code, address, the record, the context).
    _, _, r, out = run_driver(machine_factory, apps, "pepoolraise", ("hello",))
    bc = r.bugcheck
    assert lines_of(out, "pepoolraise") == ["1 GiB, raise on failure"]
    assert bc.code == BugCheckCode.SYSTEM_THREAD_EXCEPTION_NOT_HANDLED
    assert bc.params[0] == STATUS_INSUFFICIENT_RESOURCES and all(bc.params[2:])
    assert bc.location.startswith("pepoolraise.sys!DriverEntry+")


def bad_pool(machine_factory, apps, name, **kw):
    _, (p,), r, out = run_driver(machine_factory, apps, name, ("hello",), **kw)
    assert r.bugcheck is not None and p.output == b""          # the app never ran
    return r.bugcheck, lines_of(out, name)


def test_a_double_free_is_bad_pool_caller_7(machine_factory, apps):
    bc, lines = bad_pool(machine_factory, apps, "pepooltwice")
    (block,) = hexes(lines[0])
    # (7, reserved, pool header contents: no header in memory here, the block's address)
    assert (bc.code, bc.params) == (0xC2, (7, 0, 0, block))
    assert bc.location.startswith("pepooltwice.sys!DriverEntry+")
    assert "freed already" in bc.detail


def test_a_wrong_tag_is_bad_pool_caller_0xa(machine_factory, apps):
    bc, lines = bad_pool(machine_factory, apps, "pepooltag")
    (block,) = hexes(lines[0])
    assert (bc.code, bc.params) == (0xC2, (0xA, block, int.from_bytes(b"Mine", "little"),
                                           int.from_bytes(b"Your", "little")))


def test_freeing_what_never_was_pool_is_bad_pool_caller_0x42(machine_factory, apps):
    bc, lines = bad_pool(machine_factory, apps, "pepoolbad")
    (address,) = hexes(lines[0])
    assert address >= layout.KERNEL_DRIVERS                    # a variable in its image
    assert (bc.code, bc.params) == (0xC2, (0x42, address, 0, 0))
    assert bc.detail.startswith("ExFreePool:")


def test_paged_pool_above_apc_level_is_bad_pool_caller_8(machine_factory, apps):
    # At DISPATCH_LEVEL the nonpaged allocations succeed; PagedPool (1), 100 bytes: 0xC2,
    # (8, current IRQL, pool type, size).
    bc, lines = bad_pool(machine_factory, apps, "pepool", irql=2)
    assert len(hexes(lines[0])) == 2 and len(lines) == 1
    assert (bc.code, bc.params) == (0xC2, (8, 2, 1, 100))


def test_nonpaged_pool_above_dispatch_level_is_bad_pool_caller_8(machine_factory, apps):
    bc, lines = bad_pool(machine_factory, apps, "pepool", irql=3)
    assert lines == []
    assert (bc.code, bc.params) == (0xC2, (8, 3, 512, 24))


@pytest.mark.parametrize("address, params", [
    (0x1000, (0x40, 0x1000, layout.KERNEL_SPACE_START, 0)),        # a user-mode address
    (layout.KERNEL_POOL + 8, (0x46, layout.KERNEL_POOL + 8, 0, 0)),  # inside nonpaged pool
    (layout.KERNEL_POOL_PAGED + 0x2008,
     (0x50, layout.KERNEL_POOL_PAGED + 0x2008, 2, layout.KERNEL_POOL_SIZE)),
])
def test_freeing_a_non_block_names_where_it_is(machine_factory, address, params):
    from emu.nt.pool import BadPoolCall

    pools = machine_factory().executive.pools
    with pytest.raises(BadPoolCall) as err:
        pools.free(address, 0)
    assert err.value.params == params


# -- 4. Ps and Io: which process and thread ----------------------------------------------------

SYSTEM_LINE = "{}: process 4 (PsGetProcessId 4, PsGetCurrentProcess same 1), thread 8, 32-bit 0"


def test_driver_entry_and_unload_run_in_the_system_process(machine_factory, apps):
    # Windows runs DriverEntry and DriverUnload in the System process (id 4).
    _, _, r, out = run_driver(machine_factory, apps, "pedbg", ("hello",))
    lines = lines_of(out, "pedbg")
    assert r.bugcheck is None
    assert SYSTEM_LINE.format("DriverEntry") in lines
    assert lines[-1] == SYSTEM_LINE.format("DriverUnload")


def test_a_dispatch_routine_runs_in_the_requestor_s_process(machine_factory, apps):
    _, (hello, devread), r, out = run_driver(machine_factory, apps, "pedbg", ("hello",),
                                             ("devread", "\\Device\\PeDbg", "0"))
    lines = lines_of(out, "pedbg")
    pid, tid = devread.pid, devread.threads[0].tid
    assert pid != hello.pid
    assert (f"IRP_MJ_CREATE: process {pid} (PsGetProcessId {pid}, PsGetCurrentProcess same 1), "
            f"thread {tid}, 32-bit 0") in lines
    assert f"requestor {pid}, 32-bit 0" in lines
    # The IRP's Tail.Overlay.Thread is the requesting thread's ETHREAD.
    assert f"Irp->Tail.Overlay.Thread: thread {tid} of process {pid}, system thread 0" in lines


def test_no_app_shares_an_id_with_the_system_process(tmp_path):
    """Process and thread ids come from one table (Windows' CID table): 4 is the System
    process DriverEntry runs in, 8 its thread, and no app's process or thread has either id;
    the id a dispatch routine's PsGetCurrentProcessId gives is the pid `ps` shows."""

    script = "continue\nps\n"
    r = emurun.emu("debug", "--driver", str(DRIVERS / "pedbg.sys"),
                   str(ROOT / "guest/build/apps/hello"), "--",
                   str(ROOT / "guest/build/apps/devread"), "\\Device\\PeDbg", "0", input=script,
                   cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert SYSTEM_LINE.format("pedbg.sys: DriverEntry") in out
    table = out[out.index("(emu ended) ps") + 2:-1]
    shown = {int(row.split()[0]): row.split()[1] for row in table}
    assert shown == {12: "hello", 20: "devread"}
    create = next(line for line in out if line.startswith("pedbg.sys: IRP_MJ_CREATE"))
    assert create == ("pedbg.sys: IRP_MJ_CREATE: process 20 (PsGetProcessId 20, "
                      "PsGetCurrentProcess same 1), thread 24, 32-bit 0")
    ids = [int(n) for n in re.findall(r"(?:process|thread|requestor) (\d+)", create)]
    assert 4 not in ids and 8 not in ids


def test_ps_get_current_process_id_is_one_routine_for_nt_and_drivers():
    # The ELF dialect's variant (0 in the system context) is gone: nt!PsGetCurrentProcessId
    # is the address drivers bind to, Windows' routine (4 in the system context).
    from emu.nt.ntos import ps

    assert exports.EXPORTS["PsGetCurrentProcessId"] is ps.ps_get_current_process_id
    assert exports.pe_address_of("ntoskrnl.exe", "PsGetCurrentProcessId") == \
        exports.address_of("PsGetCurrentProcessId")


# -- 5. DbgPrintEx ---------------------------------------------------------------------------

def test_dbg_print_ex_prints_what_the_default_filter_lets_through(machine_factory, apps):
    # Windows' filter with no Debug Print Filter key: DPFLTR_ERROR_LEVEL only (a Level of 0,
    # or a DPFLTR_MASK mask with bit 0). WARNING, TRACE, INFO and mask 0x8 are dropped.
    _, _, _, out = run_driver(machine_factory, apps, "pedbg", ("hello",))
    assert lines_of(out, "pedbg")[:4] == [
        "error level 0 prints",
        "mask 0x3 prints",
        "vDbgPrintEx five 5 5 \\Registry\\Machine\\System\\CurrentControlSet\\Services\\pedbg",
        "KdPrintEx 42",
    ]
    assert "level" not in out.replace("error level", "")
    assert "info" not in out and "mask 0x8" not in out


# -- 3. MDLs ---------------------------------------------------------------------------------

def test_mdls_over_a_nonpaged_buffer(machine_factory, apps):
    # A NonPagedPoolNx buffer at page offset 0x10, 0x2000 bytes: three pages.
    _, _, r, out = run_driver(machine_factory, apps, "pemdl", ("hello",))
    assert r.bugcheck is None
    assert lines_of(out, "pemdl")[:5] == [
        # MmInitializeMdl's fields as wdm.h's inlines read them; Size = sizeof(MDL) + 3 * 8;
        # MDL_ALLOCATED_FIXED_SIZE (3 pages, no quota charged).
        "IoAllocateMdl: va ok 1, byte count 2000, byte offset 10, size 48, flags 8",
        # MDL_SOURCE_IS_NONPAGED_POOL: the inline MmGetSystemAddressForMdlSafe returns
        # MappedSystemVa, the buffer itself; the frame is MmGetPhysicalAddress's.
        "MmBuildMdlForNonPagedPool: flags c, frame ok 1, system address is the buffer 1",
        # MDL_PAGES_LOCKED | MDL_WRITE_OPERATION | MDL_MAPPED_TO_SYSTEM_VA; one frame, two
        # addresses: a byte written through the view reads back through the buffer.
        "mapped: flags 8b, a second address 1, same frame 1, shared byte V, valid 1",
        "unmapped: flags 8a, valid 0",
        "unlocked: flags 8; NULL valid 0",
    ]


def test_the_sioctl_sequence_reaches_the_callers_buffers(machine_factory, apps):
    # METHOD_NEITHER as sioctl.c does it: IoAllocateMdl, MmProbeAndLockPages(UserMode),
    # MmGetSystemAddressForMdlSafe -> MmMapLockedPagesSpecifyCache, MmUnlockPages, IoFreeMdl.
    m, (p,), r, out = run_driver(machine_factory, apps, "pemdl", ("ioctl", "stressed"))
    assert r.bugcheck is None
    assert p.output == (b"buffered: desserts (8 bytes)\ndirect: desserts (8 bytes)\n"
                        b"neither: desserts (8 bytes)\nunknown: 0xc0000010\n")
    (line,) = [x for x in lines_of(out, "pemdl") if x.startswith("neither")]
    frame, physical = (int(h, 16) for h in re.findall(r"(?<=frame )[0-9a-f]+|[0-9a-f]+$", line))
    assert frame == physical >> 12 and frame
    # Every lock was released and every view of the caller's frames unmapped.
    ex = m.executive
    assert all(e.locks == 0 for e in ex.mm.pfn.entries)
    assert not [va for va in range(layout.KERNEL_SYSTEM_PTES, ex.io._system_ptes, 0x1000)
                if present(ex, va)]


def test_locked_pages_stay_when_the_pager_trims(machine_factory, apps, monkeypatch):
    # Between MmProbeAndLockPages and MmUnlockPages the caller's pages are trimmed from its
    # working set (MemoryEmptyWorkingSets): the locked ones stay, with the frame the MDL
    # names; the others go.
    from emu.nt import io

    seen = {}
    map_mdl = io.IoManager.map_mdl

    def trim_then_map(self, mdl, priority=io.MDL_MAPPING_NO_EXECUTE):
        ex = self.ex
        va, _, _ = self._mdl_span(mdl)
        if va < layout.USER_SPACE_END and "before" not in seen:
            seen["before"] = len(ex.current.working_set.pages)
            seen["trimmed"] = ex.mm.pager.empty_working_sets()
            seen["frame"] = ex.kernel_read_u64(mdl + io.MDL_PFN)
            seen["pte"] = ex.cpu.walk(va, "read", cpl=3).pa >> 12
            seen["after"] = set(ex.current.working_set.pages)
        return map_mdl(self, mdl, priority)

    monkeypatch.setattr(io.IoManager, "map_mdl", trim_then_map)
    _, (p,), r, _ = run_driver(machine_factory, apps, "pemdl", ("ioctl", "stressed"))
    assert p.output.endswith(b"neither: desserts (8 bytes)\nunknown: 0xc0000010\n")
    assert seen["trimmed"] > 0 and len(seen["after"]) < seen["before"]
    assert seen["frame"] == seen["pte"]              # still mapped, to the locked frame


def test_io_is_32bit_process_tells_the_requestor(machine_factory, apps):
    _, (p64, p32), r, out = run_driver(machine_factory, apps, "pemdl", ("ioctl", "ab"),
                                       ("services32", "ioctl"))
    assert r.bugcheck is None and p32.output.endswith(b"ioctl: desserts (8 bytes)\n")
    lines = lines_of(out, "pemdl")
    # IoIs32bitProcess(Irp) asks about the requestor, IoIs32bitProcess(NULL) about the
    # current process: the same one in a dispatch routine.
    assert f"opened by process {p64.pid}, 32-bit 0 (current process: 0)" in lines
    assert f"opened by process {p32.pid}, 32-bit 1 (current process: 1)" in lines


def test_a_bad_user_buffer_raises_access_violation(machine_factory, apps):
    # No __try/__except, in DriverEntry: SYSTEM_THREAD_EXCEPTION_NOT_HANDLED
    # (STATUS_ACCESS_VIOLATION, where, the record, the context).
    bc, lines = bad_pool(machine_factory, apps, "pemdlbad")
    assert lines == ["locking 16 bytes at 0x10000"]
    assert bc.code == BugCheckCode.SYSTEM_THREAD_EXCEPTION_NOT_HANDLED
    assert bc.params[0] == 0xC000_0005 and all(bc.params[2:])
    assert bc.location.startswith("pemdlbad.sys!DriverEntry+")


def test_at_dispatch_level_a_page_not_present_is_irql_not_less_or_equal(machine_factory,
                                                                        apps):
    # Nothing may be paged in at DISPATCH_LEVEL: the fault inside MmProbeAndLockPages is
    # bug check 0x0A (the address, the IRQL, 0 = read, the routine's address).
    bc, _ = bad_pool(machine_factory, apps, "pemdlbad", irql=2)
    assert bc.code == BugCheckCode.IRQL_NOT_LESS_OR_EQUAL
    assert bc.params == (0x10000, 2, 0,
                         exports.pe_address_of("ntoskrnl.exe", "MmProbeAndLockPages"))
    assert bc.location.startswith("pemdlbad.sys!DriverEntry+")       # the driver's call


def test_unlocking_twice_is_process_has_locked_pages_1(machine_factory, apps):
    bc, lines = bad_pool(machine_factory, apps, "pemdltwice")
    (mdl,) = hexes(lines[0])
    assert (bc.code, bc.params) == (0x76, (1, mdl, 0, 0))
    assert bc.location.startswith("pemdltwice.sys!DriverEntry+")


def test_unmapping_what_is_no_view_is_system_pte_misuse_6(machine_factory, apps):
    # The I/O manager's own view of a direct-I/O MDL: unmapped at completion; unmapping it
    # again (or any address that is no view of the MDL) is 0xDA (6, MDL, address, pages).
    from emu.nt.bugcheck import BugCheck

    m = machine_factory()
    io_ = m.executive.io
    buffer = m.executive.pools.allocate(512, 0x20, 0x74736554)
    mdl = io_.allocate_mdl(buffer, 0x20)
    io_.lock_pages(mdl, user_mode=False, write=False)
    view = io_.map_mdl(mdl)
    assert m.executive.kernel_read(view, 4) == b"\0\0\0\0"
    io_.unmap_locked_pages(view, mdl)
    with pytest.raises(BugCheck) as err:
        io_.unmap_locked_pages(view, mdl)
    assert (err.value.code, err.value.params) == (0xDA, (6, mdl, view, 1))


# -- 6. the docs -----------------------------------------------------------------------------

def test_the_docs_list_every_ntoskrnl_export_in_alphabetical_order():
    text = (ROOT / "docs" / "drivers.md").read_text()
    (row,) = [line for line in text.splitlines() if line.strip().startswith("| ntoskrnl.exe |")]
    listed = re.findall(r"`([^`]+)`", row)
    assert listed == sorted(listed, key=str.lower)
    assert sorted(listed) == exports.pe_names("ntoskrnl.exe")


# -- 7. whatever a driver passes ----------------------------------------------------------------

# The routines emu.nt.ntos registers (those of emu.nt.exports are fuzzed by
# test_kernel_fuzz), but for KeBugCheck: it stops the machine with whatever code it is
# given, by design.
PE_ONLY = sorted(n for n in exports.pe_names("ntoskrnl.exe")
                 if exports.EXPORTS[n].__module__ != "emu.nt.exports" and n != "KeBugCheck")


def _fuzz_strategies():
    from hypothesis import strategies as st
    from test_kernel_fuzz import ARG

    return st.lists(st.tuples(st.sampled_from(PE_ONLY), st.lists(ARG, min_size=4, max_size=4),
                              st.lists(ARG, min_size=7, max_size=7)), min_size=1, max_size=4)


@pytest.mark.fuzz
def test_pe_exports_return_raise_or_bug_check_whatever_a_driver_passes(apps):
    # Each call returns, raises a structured exception (unhandled: a bug check) or is a bug
    # check with a stop code bugcodes.h names: never a Python exception.
    from fuzzscale import examples
    from hypothesis import HealthCheck, example, given, settings
    from test_kernel_fuzz import NOTHING, call_exports, machines

    @settings(max_examples=examples(150), deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(calls=_fuzz_strategies())
    # A huge MDL of garbage, a user range at the top, a view never mapped.
    @example(calls=[("IoAllocateMdl", [layout.MM_USER_PROBE_ADDRESS - 1, 0xFFFF_F000, 0, 0],
                     NOTHING)])
    @example(calls=[("MmProbeAndLockPages", ["mdl", 1, 1, 0], NOTHING),
                    ("MmUnlockPages", ["mdl", 0, 0, 0], NOTHING)])
    @example(calls=[("MmUnmapLockedPages", [layout.KERNEL_TEXT, "mdl", 0, 0], NOTHING)])
    @example(calls=[("ExAllocatePool2", [0x60, 16, 1, 0], NOTHING),
                    ("ExFreePool", ["block+1", 0, 0, 0], NOTHING)])
    def run(calls):
        with machines() as make:
            call_exports(make, apps, calls, b"%s %wZ %p", (0x2000, 0xFFF, 1 << 40))

    run()


def test_a_process_ending_with_locked_pages_is_process_has_locked_pages_0(machine_factory,
                                                                          apps):
    # pemdlleak.sys locks devread's buffer and never unlocks it: when devread ends, 0x76
    # (0, its EPROCESS, 1 page, 0).
    from emu.nt.ntos import ps

    m, (p,), r, _ = run_driver(machine_factory, apps, "pemdlleak",
                               ("devread", "\\Device\\PeLeak"))
    assert p.output.endswith(b"data: leak\n")
    bc = r.bugcheck
    assert (bc.code, bc.params[0], bc.params[2:]) == (0x76, 0, (1, 0))
    assert m.executive.kernel_read_u64(bc.params[1] + ps.EPROCESS_UNIQUE_PROCESS_ID) == p.pid


def test_an_import_of_ex_allocate_pool2_binds(machine_factory, apps, tmp_path):
    # A driver linked against an import library that has ExAllocatePool2 (the current
    # WDK's; here one llvm-dlltool makes from a .def) imports it by name: it binds.
    import subprocess
    import sys

    import pefile
    import ziglang

    ddk = Path(ziglang.__file__).parent / "lib/libc/include/any-windows-any/ddk"
    (tmp_path / "pool2.c").write_text(
        "#include <ntddk.h>\n"
        "NTKERNELAPI PVOID NTAPI ExAllocatePool2(ULONG64 Flags, SIZE_T NumberOfBytes,"
        " ULONG Tag);\n"
        "NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)\n"
        "{\n"
        "    UCHAR *p = ExAllocatePool2(0x40, 32, 'looP');\n"
        "    UNREFERENCED_PARAMETER(DriverObject);\n"
        "    UNREFERENCED_PARAMETER(RegistryPath);\n"
        "    DbgPrint(\"pool2.sys: %d\\n\", p != NULL && p[31] == 0);\n"
        "    ExFreePoolWithTag(p, 'looP');\n"
        "    return STATUS_SUCCESS;\n"
        "}\n")
    (tmp_path / "pool2.def").write_text("LIBRARY ntoskrnl.exe\nEXPORTS\nExAllocatePool2\n")
    zig = [sys.executable, "-m", "ziglang"]
    cache = str(ROOT / "guest" / "build" / "zig-cache")
    env = {"ZIG_GLOBAL_CACHE_DIR": cache, "ZIG_LOCAL_CACHE_DIR": cache,
           "PATH": "/usr/bin:/bin"}

    def run(*args: str) -> None:
        subprocess.run([*zig, *args], cwd=tmp_path, env=env, check=True)

    run("dlltool", "-m", "i386:x86-64", "-d", "pool2.def", "-l", "libpool2.a")
    run("cc", "-target", "x86_64-windows-gnu", "-O2", "-fms-extensions", "-Wall", "-Werror",
        f"-I{ddk}", "-c", "pool2.c", "-o", "pool2.o")
    run("cc", "-target", "x86_64-windows-gnu", "-shared", "-nostdlib",
        "-Wl,--subsystem,native", "-Wl,--entry,DriverEntry", "pool2.o", "-L.", "-lpool2",
        "-lntoskrnl", "-o", "pool2.sys")
    image = pefile.PE(str(tmp_path / "pool2.sys"))
    imported = {i.name.decode() for d in image.DIRECTORY_ENTRY_IMPORT for i in d.imports}
    assert "ExAllocatePool2" in imported
    m = machine_factory()
    m.add_driver(tmp_path / "pool2.sys")
    m.spawn(apps / "hello", [])
    r = m.run()
    assert r.drivers[0].status == 0 and bytes(m.executive.debug_output) == b"pool2.sys: 1\n"


@pytest.mark.parametrize("operation, mode, where, raised", [
    (0, 1, "image", False),           # IoReadAccess of the app's code: fine
    (1, 1, "image", True),            # IoWriteAccess of read-only code: access violation
    (2, 0, "image", True),            # IoModifyAccess, KernelMode: still not writable
    (1, 1, "stack", False),           # its stack is writable
    (0, 1, "kstack", True),           # UserMode may not name a kernel address
    (0, 0, "kstack", False),          # KernelMode may
])
def test_probe_and_lock_checks_the_access(apps, operation, mode, where, raised):
    # Called from a driver running in a process's thread (as a dispatch routine is):
    # the wrong access raises STATUS_ACCESS_VIOLATION, unhandled here (0x1E).
    from test_kernel_fuzz import Scene, machines

    from emu.nt.bugcheck import BugCheck

    with machines() as make:
        scene = Scene(make, apps, b"", (0, 0, 0))
        ex = scene.ex
        mdl = ex.io.allocate_mdl(scene.resolve(where), 16)
        try:
            scene.call("MmProbeAndLockPages", [mdl, mode, operation, 0], [0] * 7)
        except BugCheck as bc:
            assert raised and bc.code == 0x1E and bc.params[0] == 0xC000_0005
            return
        assert not raised
        flags = int.from_bytes(ex.kernel_read(mdl + 0xA, 2), "little")
        assert flags & 0x2 and bool(flags & 0x80) == (operation != 0)
        (frame,) = struct.unpack("<Q", ex.kernel_read(mdl + 0x30, 8))
        assert ex.mm.pfn.entries[frame].locks == 1
        assert frame in ex.mm.pfn.locked


@pytest.mark.parametrize("name, args, irql, params", [
    # PagedPool freed at DISPATCH_LEVEL: (9, IRQL, pool type, address).
    ("ExFreePoolWithTag", ["paged_block", 0x7A7A7546], 2, (9, 2, 1, "paged_block")),
    ("ExFreePool", ["nx_block"], 3, (9, 3, 512, "nx_block")),   # nonpaged above DISPATCH
    # MustSucceed pool types are no longer supported: (0x9A, type, size, tag).
    ("ExAllocatePoolWithTag", [2, 0x20, 0x74736554], 0, (0x9A, 2, 0x20, 0x74736554)),
    # ExAllocatePool2's POOL_FLAG_PAGED above APC_LEVEL: (8, IRQL, PagedPool, size).
    ("ExAllocatePool2", [0x100, 0x20, 0x74736554], 2, (8, 2, 1, 0x20)),
])
def test_pool_misuse_at_any_irql_is_bad_pool_caller(apps, name, args, irql, params):
    from test_kernel_fuzz import Scene, machines

    from emu.nt.bugcheck import BugCheck

    with machines() as make:
        scene = Scene(make, apps, b"", (0, 0, 0))
        scene.ex.irql = irql
        with pytest.raises(BugCheck) as err:
            scene.call(name, [scene.resolve(a) for a in args] + [0] * (4 - len(args)),
                       [0] * 7)
        assert err.value.code == 0xC2
        assert err.value.params == tuple(scene.resolve(p) for p in params)


def test_io_allocate_mdl_with_an_irp_chains_it(apps):
    # SecondaryBuffer FALSE: the MDL becomes Irp->MdlAddress; TRUE: the last of the chain.
    from test_kernel_fuzz import Scene, machines

    from emu.nt import io

    with machines() as make:
        scene = Scene(make, apps, b"", (0, 0, 0))
        ex = scene.ex
        irp = ex.pools.allocate(512, io.IRP_SIZE, 0x20707249)
        first = scene.call("IoAllocateMdl", [scene.image, 0x10, 0, 0], [irp] + [0] * 6).rax
        second = scene.call("IoAllocateMdl", [scene.image, 0x20, 1, 1], [irp] + [0] * 6).rax
        assert ex.kernel_read_u64(irp + io.IRP_MDL) == first
        assert ex.kernel_read_u64(first) == second and ex.kernel_read_u64(second) == 0
        # ChargeQuota: not one of the fixed-size MDLs.
        assert ex.kernel_read(first + io.MDL_FLAGS, 2) == b"\x08\x00"
        assert ex.kernel_read(second + io.MDL_FLAGS, 2) == b"\x00\x00"
