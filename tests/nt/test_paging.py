"""Paging: working sets, the clock, the modified page writer, the pagefile on disk.

The seed: "When physical memory is low, the memory manager saves pages of physical
memory (typically 4 kilobytes in size) to a disk file." Every test here checks what a
user would see: the bytes the guest reads back, the bytes in the pagefile, the PTEs,
the counters, the bug check a driver gets.
"""

from __future__ import annotations

import struct
from pathlib import Path

import emurun
import pytest

from emu.hw import mmu
from emu.hw.memory import PhysicalMemory
from emu.hw.mmu import PTE
from emu.nt.bugcheck import BugCheckCode
from emu.nt.mm import softpte
from emu.nt.mm.check import check_memory
from emu.nt.mm.pagefile import Pagefile, PagefileError, PagefileReadError
from emu.nt.mm.softpte import PteState
from emu.nt.mm.vad import MemType
from emu.nt.status import NTSTATUS

DRIVERS = Path(__file__).resolve().parents[2] / "guest" / "build" / "drivers"
P = 4096
M64 = (1 << 64) - 1


def mix(z: int) -> int:
    """splitmix64's finalizer: pattern.c's word function (see its header comment)."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def pattern_word(seed: int, i: int) -> int:
    return mix(((seed << 32) | i) & M64)


def pattern_checksum(mib: int, seed: int) -> int:
    return sum(pattern_word(seed, i) for i in range(mib * 131072)) & M64


# Computed with pattern_checksum (about 4 s each in Python, so written down here).
CHECKSUM_16MIB = {1: 0xA41E9C3A302ACC69, 2: 0x6C27DA3C9BD61AEE}


def lines(proc) -> list[str]:
    return proc.output.decode().splitlines()


def region_of(proc, size: int) -> int:
    """The base of the process's private allocation of ``size`` bytes."""
    (vad,) = [v for v in proc.vads if v.type == MemType.MEM_PRIVATE and not v.stack
              and v.end - v.base == size]
    return vad.base


def emu(*args):
    """``python -m emu ARGS``, in a fork of this process (tests/emurun.py)."""
    return emurun.emu(*args, timeout=300)


# -- software PTEs ----------------------------------------------------------------------------

@pytest.mark.parametrize("pte", [softpte.pagefile_pte(7, softpte.MM_READWRITE),
                                 softpte.transition_pte(0x1234, softpte.MM_EXECUTE_READ),
                                 softpte.demand_zero_pte(softpte.MM_READONLY)])
def test_the_cpu_ignores_every_bit_of_a_software_pte(pte):
    """SDM §4.5: P = 0 means not present, whatever the other bits say; no RSVD fault."""
    mem = PhysicalMemory(1 << 20)
    for level, table in enumerate((0x1000, 0x2000, 0x3000)):
        mem.write_u64(table, (0x2000 + level * 0x1000) | PTE.P | PTE.RW | PTE.US)
    mem.write_u64(0x4000, pte)
    with pytest.raises(mmu.PageFault) as err:
        mmu.walk(mem, 0x0, "read", cr3=0x1000, cpl=3, cr0=int(mmu.CR0.PG | mmu.CR0.PE),
                 cr4=int(mmu.CR4.PAE), efer=int(mmu.EFER.LME | mmu.EFER.LMA | mmu.EFER.NXE))
    assert err.value.error_code == mmu.PFErr.U and err.value.level == 1


def test_software_ptes_decode_to_what_was_encoded():
    d = softpte.decode(softpte.pagefile_pte(0x12345, softpte.MM_READWRITE))
    assert (d.state, d.slot, d.protection) == (PteState.PAGEFILE, 0x12345, softpte.MM_READWRITE)
    d = softpte.decode(softpte.transition_pte(0xABCDE, softpte.MM_EXECUTE_READWRITE))
    assert (d.state, d.pfn, d.protection) == (PteState.TRANSITION, 0xABCDE,
                                              softpte.MM_EXECUTE_READWRITE)
    assert softpte.decode(softpte.demand_zero_pte(softpte.MM_READONLY)).state is \
        PteState.DEMAND_ZERO
    assert softpte.decode(0).state is PteState.ZERO
    assert softpte.decode(0x5000 | PTE.P | PTE.RW | PTE.NX) == softpte.Decoded(
        PteState.VALID, softpte.MM_READWRITE, pfn=5)
    with pytest.raises(ValueError):
        softpte.pagefile_pte(0, softpte.MM_READWRITE)      # slot 0 is reserved


# -- the pagefile -------------------------------------------------------------------------------

def test_pagefile_slots_are_handed_out_lowest_first_and_slot_zero_never(tmp_path):
    pf = Pagefile(4 * P, tmp_path / "pf")
    assert [pf.allocate() for _ in range(4)] == [1, 2, 3, None]
    pf.release(2)
    assert pf.allocate() == 2
    pf.write(3, b"\xAB" * P)
    assert pf.read(3) == b"\xAB" * P
    assert (tmp_path / "pf").read_bytes()[3 * P:4 * P] == b"\xAB" * P
    assert (tmp_path / "pf").stat().st_size == 4 * P
    pf.close()


@pytest.mark.parametrize("size", [0, P, P + 1])
def test_a_pagefile_too_small_is_refused_naming_the_minimum(tmp_path, size):
    with pytest.raises(PagefileError, match="at least 8K"):
        Pagefile(size, tmp_path / "pf")


def test_the_default_pagefile_is_a_temporary_file_no_one_else_sees(machine_factory, apps):
    """Made in $TMPDIR and unlinked at once: nothing is left behind, even after a kill."""
    m = machine_factory(mem="2M")
    assert m.pagefile.temporary and m.pagefile.size == 64 << 20   # the default: 64M at least
    assert not m.pagefile.path.exists()
    proc = m.spawn(apps / "pattern", ["4", "1"])
    m.run()
    assert proc.exit_status == 0 and m.pagefile.writes > 0


# -- more memory than RAM -----------------------------------------------------------------------

# About 4 s of CPU (up to 8 s while the machine is shared): two processes push 32 MiB through
# 2 MiB of RAM, over 6,000 hard faults and as many pagefile writes; that volume is the point.
def test_two_apps_touch_32_mib_in_2_mib_of_ram_and_every_byte_comes_back(machine_factory, apps):
    m = machine_factory(mem="2M")
    one, two = m.spawn(apps / "pattern", ["16", "1"]), m.spawn(apps / "pattern", ["16", "2"])
    result = m.run()
    for proc, seed in ((one, 1), (two, 2)):
        assert lines(proc) == [f"pattern: seed {seed}, 16 MiB written",
                               f"pattern: checksum {CHECKSUM_16MIB[seed]:#018x}, 0 bad words"]
        assert proc.exit_status == 0 and proc.exception is None
        counters = proc.working_set.counters
        assert counters.hard_faults > 3000 and counters.pages_written > 3000
        assert proc.working_set.peak < 512
    paging = result.stats.paging
    assert paging["hard_faults"] == one.working_set.counters.hard_faults + \
        two.working_set.counters.hard_faults
    assert paging["pages_read"] == paging["hard_faults"]
    assert paging["pages_written"] >= 8192 - 512     # all but what RAM holds went out


def test_the_pattern_formula_is_the_one_the_guest_uses(machine_factory, apps):
    m = machine_factory(mem="2M")
    proc = m.spawn(apps / "pattern", ["1", "3"])
    m.run()
    assert lines(proc)[1] == f"pattern: checksum {pattern_checksum(1, 3):#018x}, 0 bad words"


def test_replacement_is_deterministic(machine_factory, apps):
    def once():
        m = machine_factory(mem="2M")
        procs = [m.spawn(apps / "pattern", ["3", str(seed)]) for seed in (4, 5)]
        result = m.run()
        return ([(p.output, p.working_set.counters, p.working_set.peak) for p in procs],
                result.stats.paging)

    first = once()
    assert first == once()
    assert first[1]["hard_faults"] > 0


def test_the_second_read_pass_writes_nothing(machine_factory, apps):
    """reread writes 4 MiB (in 2 MiB of RAM), then reads it twice: the second read pass
    hard-faults every page back in, and trims them again, without writing one of them to
    the pagefile (clean pages keep their slot's copy)."""
    phase, written, bases = ["write"], [], []

    def console(proc, data):
        if proc is not None:
            phase.append(data.decode().strip())
            bases.append(region_of(proc, 4 << 20))

    m = machine_factory(mem="2M", console=console)
    pfn = m.executive.mm.pfn
    to_standby = pfn.written

    def record(frame):                  # the modified page writer stored this frame
        written.append((phase[-1], pfn.entries[frame].va))
        to_standby(frame)

    pfn.written = record
    proc = m.spawn(apps / "reread", ["4"])
    m.run()
    assert proc.exit_status == 0
    region = range(bases[0], bases[0] + (4 << 20))
    by_phase = {}
    for when, va in written:
        by_phase.setdefault(when.split(" sum")[0], []).append(va in region)
    assert sum(by_phase["write"]) > 500                    # the writes went out
    assert not any(by_phase.get("reread: pass 1", []))     # pass 2 ran after this line
    assert proc.working_set.counters.hard_faults > 2 * 700


def test_a_commit_beyond_ram_and_pagefile_fails_and_the_others_run_on(machine_factory, apps):
    m = machine_factory(mem="4M", pagefile_size="4M")
    big, small = m.spawn(apps / "pattern", ["16", "1"]), m.spawn(apps / "pattern", ["2", "2"])
    result = m.run()
    assert lines(big) == ["pattern: commit of 16 MiB failed: 0xc000012d"]
    assert big.exit_status == 3 and big.exception is None
    assert small.exit_status == 0 and result.bugcheck is None


def test_without_a_pagefile_commit_is_limited_by_ram(machine_factory, apps):
    m = machine_factory(mem="4M", pagefile_size=0)
    proc = m.spawn(apps / "pattern", ["8", "1"])
    m.run()
    assert lines(proc) == ["pattern: commit of 8 MiB failed: 0xc000012d"]
    assert m.executive.mm.pager.counters.trims == 0


def test_the_books_balance_while_pages_move(machine_factory, apps):
    """check_memory at every line the apps print (mid-run, pages everywhere) and at the end:
    PFN records, lists, PTEs, slots and working sets all agree."""
    reports = []

    def console(proc, data):
        reports.append(check_memory(m.executive.mm))

    m = machine_factory(mem="2M", console=console)
    for seed in (1, 2, 3):
        m.spawn(apps / "pattern", ["3", str(seed)])
    m.spawn(apps / "listcmd", ["all"])
    m.spawn(apps / "hotcold", ["32", "256", "16"])
    m.run()
    assert len(reports) >= 8 and reports == [[]] * len(reports)
    assert m.executive.mm.pager.counters.hard_faults > 0
    assert check_memory(m.executive.mm) == []


def test_the_check_sees_a_broken_book(machine_factory, apps):
    m = machine_factory(mem="2M")
    proc = m.spawn(apps / "hello")
    mm = m.executive.mm
    mapping = next(proc.space.user_mappings())
    mm.pfn.entries[mapping.pfn].owner = 999                 # a frame "owned" by nobody
    pte_pa = proc.space.pte_address(mapping.va, create=False)
    stray = softpte.pagefile_pte(5, softpte.MM_READWRITE)   # a slot nobody allocated
    mm.mem.write_u64(pte_pa + 8 if (mapping.va >> 12) & 511 < 511 else pte_pa - 8, stray)
    problems = check_memory(mm)
    assert any("owned by 999" in p for p in problems)
    assert any("slots named by PTEs" in p for p in problems)


# -- the pagefile on disk -----------------------------------------------------------------------

def test_an_evicted_page_is_in_the_pagefile_at_the_slot_its_pte_names(machine_factory, apps,
                                                                       tmp_path):
    path = tmp_path / "pagefile.sys"
    seen = {}

    def console(proc, data):
        if proc is None or b"written" not in data:
            return
        pager = m.executive.mm.pager
        pager.empty_working_sets()
        pager.write_modified()
        pager.purge_standby()
        base = region_of(proc, 1 << 20)
        for va in range(base, base + (1 << 20), P):
            seen[va - base] = softpte.decode(proc.space.pte(va))

    m = machine_factory(mem="16M", pagefile=path, pagefile_size="4M", console=console)
    proc = m.spawn(apps / "pattern", ["1", "9"])
    m.run()
    assert lines(proc)[1] == f"pattern: checksum {pattern_checksum(1, 9):#018x}, 0 bad words"
    assert {d.state for d in seen.values()} == {PteState.PAGEFILE}
    assert len({d.slot for d in seen.values()}) == 256
    assert {d.protection for d in seen.values()} == {softpte.MM_READWRITE}
    disk = path.read_bytes()
    for offset, d in seen.items():
        words = struct.unpack("<512Q", disk[d.slot * P:(d.slot + 1) * P])
        assert words == tuple(pattern_word(9, offset // 8 + i) for i in range(512))


def test_trimmed_pages_wait_in_transition_and_come_back_without_io(machine_factory, apps):
    got = {}

    def console(proc, data):
        if proc is None or b"written" not in data:
            return
        pager = m.executive.mm.pager
        pager.empty_working_sets()
        base = region_of(proc, 1 << 20)
        got["states"] = {softpte.decode(proc.space.pte(va)).state
                         for va in range(base, base + (1 << 20), P)}
        got["reads"] = pager.counters.pages_read

    m = machine_factory(mem="16M", console=console)
    proc = m.spawn(apps / "pattern", ["1", "9"])
    m.run()
    assert proc.exit_status == 0 and got["states"] == {PteState.TRANSITION}
    counters = proc.working_set.counters
    assert counters.soft_faults >= 256 and counters.hard_faults == 0
    assert m.executive.mm.pager.counters.pages_read == got["reads"] == 0


def test_a_killed_process_gives_back_its_frames_and_slots(machine_factory, apps):
    def console(proc, data):
        if proc is not None and b"written" in data:
            m.executive.terminate(proc, 0xC000013A)    # STATUS_CONTROL_C_EXIT

    m = machine_factory(mem="2M", console=console)
    ex = m.executive
    free = ex.mm.pfn.free_count
    assert m.pagefile.used_slots == 0
    proc = m.spawn(apps / "pattern", ["6", "1"])
    m.run()
    assert proc.exit_status == 0xC000013A and len(lines(proc)) == 1
    assert m.pagefile.used_slots == 0
    assert ex.mm.pfn.free_count == free and not ex.mm.pfn.standby and not ex.mm.pfn.modified
    assert not any(ws.pages for ws in ex.mm.pager.working_sets) and check_memory(ex.mm) == []
    assert proc.working_set.counters.pages_written > 0


# -- drivers and IRQL ---------------------------------------------------------------------------

PAGED_SUM = sum((i * 7 + 3) & 0xFF for i in range(12288))
USER_SUM = sum(i & 0xFF for i in range(4096))


def test_paged_pool_is_paged_back_in_at_passive_level(machine_factory, apps):
    m = machine_factory()
    m.add_driver(DRIVERS / "pagedpool.sys")
    proc = m.spawn(apps / "pagedrv", ["passive"])
    result = m.run()
    assert lines(proc) == [f"pagedrv: passive sum {PAGED_SUM:#018x}"]
    assert result.bugcheck is None
    assert m.executive.mm.pager.system_ws.counters.hard_faults == 3


def test_paged_pool_at_dispatch_level_is_a_bug_check_even_though_the_data_is_safe(
        machine_factory, apps):
    m = machine_factory()
    m.add_driver(DRIVERS / "pagedpool.sys")
    proc = m.spawn(apps / "pagedrv", ["dispatch"])
    result = m.run()
    bc = result.bugcheck
    assert bc.code == BugCheckCode.DRIVER_IRQL_NOT_LESS_OR_EQUAL
    assert bc.params[:3] == (0xFFFF_A100_0000_0000, 2, 0)
    assert bc.driver == "pagedpool.sys" and "in the pagefile, slot" in bc.detail
    assert lines(proc) == []


def test_a_paged_out_user_page_read_by_a_driver(machine_factory, apps):
    m = machine_factory()
    m.add_driver(DRIVERS / "pagedpool.sys")
    proc = m.spawn(apps / "pagedrv", ["user-passive"])
    assert m.run().bugcheck is None
    assert lines(proc) == [f"pagedrv: user sum {USER_SUM:#018x}"]
    assert proc.working_set.counters.hard_faults > 0

    m = machine_factory()
    m.add_driver(DRIVERS / "pagedpool.sys")
    proc = m.spawn(apps / "pagedrv", ["user-dispatch"])
    bc = m.run().bugcheck
    assert bc.code == BugCheckCode.DRIVER_IRQL_NOT_LESS_OR_EQUAL
    assert bc.params[1:3] == (2, 0) and bc.params[0] < 0x8000_0000_0000
    assert "in the pagefile" in bc.detail


def test_memory_list_commands_and_their_refusals(machine_factory, apps):
    m = machine_factory()
    ok, bad = m.spawn(apps / "listcmd", ["all"]), m.spawn(apps / "listcmd", ["bad"])
    m.run()
    assert lines(ok) == ["listcmd: empty 0x00000000", "listcmd: flush 0x00000000",
                         "listcmd: purge 0x00000000"]
    assert lines(bad) == [f"listcmd: bad-length {NTSTATUS.STATUS_INFO_LENGTH_MISMATCH:#010x}",
                          f"listcmd: bad-command {NTSTATUS.STATUS_INVALID_PARAMETER:#010x}",
                          f"listcmd: bad-class {NTSTATUS.STATUS_INVALID_INFO_CLASS:#010x}"]


# -- bad input ----------------------------------------------------------------------------------

def test_a_pagefile_that_cannot_be_created_is_one_line(apps, tmp_path):
    r = emu("run", "--pagefile", tmp_path / "no" / "such" / "dir" / "pf", apps / "hello")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("emu: error: cannot create the pagefile ") and \
        r.stderr.count("\n") == 1


@pytest.mark.parametrize("args", [["--pagefile-size", "4K"], ["--pagefile-size", "0"],
                                  ["--no-pagefile", "--pagefile-size", "8M"]])
def test_bad_pagefile_options_are_one_line(apps, args):
    r = emu("run", *args, apps / "hello")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_a_full_disk_keeps_the_pages_in_ram_and_fails_the_access_that_needed_one(apps):
    """/dev/full refuses every write (ENOSPC): nothing can leave RAM, so the app that
    needs more memory gets STATUS_IN_PAGE_ERROR (cause STATUS_DISK_FULL); hello runs."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this host")
    r = emu("run", "--mem", "2M", "--pagefile", "/dev/full", apps / "pattern", "4", "1",
            "--", apps / "hello")
    assert r.returncode == 125
    assert "Hello, world!" in r.stdout
    assert 'process 12 "pattern" terminated: STATUS_IN_PAGE_ERROR (0xC0000006)' in r.stderr


def test_the_run_report_has_the_paging_counters(apps, tmp_path):
    out = tmp_path / "r.json"
    r = emu("run", "--mem", "2M", "--report", out, apps / "pattern", "4", "1")
    assert r.returncode == 0
    import json
    report = json.loads(out.read_text())
    paging = report["processes"][0]["paging"]
    assert paging["hard_faults"] > 0 and paging["peak_working_set"] < 512
    assert report["stats"]["paging"]["pages_written"] >= paging["pages_written"] > 0


def test_the_address_space_map_names_where_each_page_is(machine_factory, apps):
    from emu.viz.addrmap import RegionState, capture

    maps = {}

    def console(proc, data):
        if proc is None or b"written" not in data:
            return
        pager = m.executive.mm.pager
        pager.empty_working_sets()
        maps["transition"] = capture(proc)
        pager.write_modified()
        pager.purge_standby()
        maps["pagefile"] = capture(proc)

    m = machine_factory(mem="4M", console=console)
    proc = m.spawn(apps / "pattern", ["1", "1"])
    m.run()
    for state in ("transition", "pagefile"):
        pm = maps[state]
        base = region_of_map(pm)
        assert pm.pages == ()                        # nothing valid: every page was trimmed
        (region,) = [r for r in pm.regions if r.start == base]
        assert region.end - region.start == 1 << 20
        assert region.state is {"transition": RegionState.TRANSITION,
                                "pagefile": RegionState.PAGEFILE}[state]
    assert proc.exit_status == 0


def region_of_map(pm) -> int:
    """The 1 MiB heap region's start: the lowest address the map shows (0x10000 upward)."""
    return min(r.start for r in pm.regions)


def test_protecting_a_paged_out_page_updates_its_software_pte(machine_factory, apps):
    from emu.nt.mm import virtual
    from emu.nt.mm.vad import PageProtect

    got = {}

    def console(proc, data):
        if proc is None or b"written" not in data:
            return
        ex = m.executive
        ex.mm.pager.empty_working_sets()
        base = region_of(proc, 1 << 20)
        virtual.protect(ex, proc, base, P, PageProtect.PAGE_READONLY)
        got["ro"] = softpte.decode(proc.space.pte(base))
        virtual.protect(ex, proc, base, P, PageProtect.PAGE_READWRITE | PageProtect.PAGE_GUARD)
        got["guard"] = softpte.decode(proc.space.pte(base))
        virtual.protect(ex, proc, base, P, PageProtect.PAGE_READWRITE)

    m = machine_factory(mem="4M", console=console)
    proc = m.spawn(apps / "pattern", ["1", "1"])
    m.run()
    assert proc.exit_status == 0
    assert (got["ro"].state, got["ro"].protection) == (PteState.TRANSITION, softpte.MM_READONLY)
    assert got["guard"].protection == softpte.MM_READWRITE | softpte.MM_GUARD_PAGE


# -- a pagefile is one machine's, and only ever a pagefile ----------------------------------------

def test_a_second_machine_on_the_same_pagefile_is_refused(machine_factory, apps, tmp_path):
    """Two machines sharing slots would overwrite each other's pages: the second is refused
    while the first lives (an advisory lock held for the machine's life), then allowed."""
    path = tmp_path / "pf"
    first = machine_factory(mem="2M", pagefile=path, pagefile_size="16M")
    with pytest.raises(PagefileError) as err:
        machine_factory(mem="2M", pagefile=path, pagefile_size="16M")
    assert str(err.value) == f"--pagefile {path}: in use by another machine"
    proc = first.spawn(apps / "pattern", ["4", "1"])
    first.run()
    assert proc.exit_status == 0 and first.pagefile.writes > 0
    first.close()
    again = machine_factory(mem="2M", pagefile=path, pagefile_size="16M")
    assert again.pagefile.path == path


def test_the_cli_refuses_a_pagefile_in_use_in_one_line(apps, tmp_path):
    path = tmp_path / "pf"
    held = Pagefile(4 * P, path)
    try:
        r = emu("run", "--pagefile", path, apps / "hello")
    finally:
        held.close()
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == f"emu: error: --pagefile {path}: in use by another machine\n"


@pytest.mark.parametrize("command", ["run", "debug", "query"])
def test_a_pagefile_larger_than_a_pte_can_name_is_refused_in_one_line(apps, command):
    """2^32 slots at most (a software PTE's slot field, bits 63:32); 2^64 bytes was a
    traceback (OverflowError from the file's truncate)."""
    where = ["write", "0x403000"] if command == "query" else []
    r = emu(command, *where, "--pagefile-size", str(1 << 64), apps / "hello")
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "a pagefile holds at most 2^32 pages (16384G: a software PTE names its slot " \
           "in 32 bits)" in r.stderr
    if command == "run":
        assert r.stderr.startswith(f"emu: error: --pagefile-size {1 << 64}: ")


def test_a_large_pagefile_costs_host_memory_by_the_slots_used_not_its_size(tmp_path):
    """A 1000G pagefile cost 64 s and 10 GB of host memory before the machine started (a
    list of every free slot); now a slot costs only once it is used, lowest first."""
    import tracemalloc

    tracemalloc.start()
    try:
        pf = Pagefile(16 << 30, tmp_path / "pf")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    try:
        assert peak < 1 << 20
        assert (pf.slots, pf.free_slots, pf.used_slots) == (1 << 22, (1 << 22) - 1, 0)
        assert [pf.allocate() for _ in range(4)] == [1, 2, 3, 4]
        pf.release(3)
        pf.release(2)
        assert [pf.allocate() for _ in range(3)] == [2, 3, 5]
        assert (pf.free_slots, pf.used_slots) == ((1 << 22) - 6, 5)
        assert not pf.holds_page(6) and pf.holds_page(5) and not pf.holds_page(0)
    finally:
        pf.close()
    small = Pagefile(3 * P)
    try:
        assert [small.allocate(), small.allocate(), small.allocate()] == [1, 2, None]
        assert small.free_slots == 0
    finally:
        small.close()


def test_an_existing_file_that_is_not_a_pagefile_is_never_overwritten(apps, tmp_path):
    app = tmp_path / "hello"
    app.write_bytes((apps / "hello").read_bytes())
    before = app.read_bytes()
    r = emu("run", "--pagefile", app, app)                    # the app as its own pagefile
    assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1
    assert r.stderr == f"emu: error: --pagefile {app}: is also an image being run\n"
    notes = tmp_path / "notes.txt"
    notes.write_text("precious\n")
    r = emu("run", "--pagefile", notes, apps / "hello")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert r.stderr == f"emu: error: --pagefile {notes}: exists and is not a pagefile " \
                       "(it does not start with the pagefile header); not overwritten\n"
    assert app.read_bytes() == before and notes.read_text() == "precious\n"


def test_a_pagefile_is_recognised_by_its_header_and_reused(tmp_path):
    path = tmp_path / "pf"
    pf = Pagefile(4 * P, path)
    pf.write(1, b"\x11" * P)
    pf.close()
    assert path.read_bytes()[:16] == b"EMU PAGEFILE 1\n\0"
    empty = tmp_path / "empty"
    empty.touch()
    for reused in (path, empty):                  # ours, or empty: made afresh, at full size
        pf = Pagefile(8 * P, reused)
        assert reused.stat().st_size == 8 * P and pf.read(1) == bytes(P)
        pf.close()


@pytest.mark.parametrize("make", ["dir", "fifo"])
def test_a_pagefile_path_that_is_not_a_file_is_refused(tmp_path, make):
    import os
    path = tmp_path / make
    os.mkdir(path) if make == "dir" else os.mkfifo(path)
    with pytest.raises(PagefileError) as err:
        Pagefile(4 * P, path)
    assert str(err.value) == f"--pagefile {path}: not a regular file or a character device"


def test_a_short_read_from_the_pagefile_fails_the_access_not_zero_data(apps):
    """/dev/null takes every write and reads back nothing: the access that needs a page
    back gets STATUS_IN_PAGE_ERROR (cause STATUS_END_OF_FILE), never a page of zeros."""
    r = emu("run", "--mem", "2M", "--pagefile", "/dev/null", apps / "pattern", "4", "1",
            "--", apps / "hello")
    assert "Hello, world!" in r.stdout
    assert "bad words" not in r.stdout
    assert 'process 12 "pattern" terminated: STATUS_IN_PAGE_ERROR (0xC0000006)' in r.stderr
    assert r.returncode == 125


def test_a_pagefile_cut_short_under_the_machine_fails_the_read(tmp_path):
    pf = Pagefile(4 * P, tmp_path / "pf")
    pf.write(3, b"\xAB" * P)
    import os
    os.truncate(tmp_path / "pf", 3 * P + 100)
    with pytest.raises(PagefileReadError) as err:
        pf.read(3)
    assert err.value.status == NTSTATUS.STATUS_END_OF_FILE
    assert str(err.value) == "pagefile read of slot 3 came back short (100 of 4096 bytes)"
    pf.close()


def test_paged_pool_that_cannot_be_read_back_is_kernel_data_inpage_error(machine_factory,
                                                                          apps):
    """KERNEL_DATA_INPAGE_ERROR (0x7A): PTE address, the I/O status, the PTE, the address."""
    m = machine_factory(pagefile="/dev/null")
    m.add_driver(DRIVERS / "pagedpool.sys")
    proc = m.spawn(apps / "pagedrv", ["passive"])
    bc = m.run().bugcheck
    assert bc.code == BugCheckCode.KERNEL_DATA_INPAGE_ERROR == 0x7A
    pte_pa, status, pte, va = bc.params
    assert status == NTSTATUS.STATUS_END_OF_FILE and va == 0xFFFF_A100_0000_0000
    assert softpte.decode(pte).state is PteState.PAGEFILE
    assert m.mem.read_u64(pte_pa) == pte
    assert lines(proc) == []
    import io

    from emu.debugger.shell import Shell
    from emu.debugger.target import LiveTarget
    out = io.StringIO()
    Shell(LiveTarget(m), stdout=out).onecmd("analyze")
    text = out.getvalue()
    assert text.startswith("bug check 0x7a KERNEL_DATA_INPAGE_ERROR: a page of kernel data")
    assert f"(not valid: in the pagefile, slot {softpte.decode(pte).slot} (read/write))" in text


def test_building_page_tables_leaves_no_pte_enum_value_with_frame_bits(machine_factory, apps):
    """Every paging-structure entry the executive builds is an int: none becomes a PTE enum
    pseudo-member (an int with frame bits or'ed into a flag makes one, kept by the enum for
    the life of the process, about 12 us the first time): a run that builds page tables and
    pages through a 2 MiB machine adds only combinations of the named bits."""
    before = set(PTE._value2member_map_)
    m = machine_factory(mem="2M")
    proc = m.spawn(apps / "pattern", ["16", "1"])
    m.run()
    assert proc.exit_status == 0
    added = set(PTE._value2member_map_) - before
    assert [hex(v) for v in added if v & ~mmu._FLAG_MASK] == []
