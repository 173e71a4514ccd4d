"""The debugger's Target: a live machine and a crash dump read the same way, and reading
never changes the machine."""

from __future__ import annotations

import json
import struct
import zlib

import pytest
from state_harness import MARKERS, machine, pid_of, two_processes

from emu.debugger.target import DumpTarget, LiveTarget, TargetError, open_dump
from emu.hw import mmu
from emu.nt import dump, exports, ntos  # noqa: F401 (ntos registers the exports)


@pytest.fixture(scope="module")
def pair():
    """(machine, target) of notepad and myapp stopped mid-run."""
    m = two_processes()
    yield m, LiveTarget(m)
    m.close()


@pytest.fixture(scope="module")
def crashed(tmp_path_factory):
    """(machine, live target, dump target) of hello beside crash.sys's bug check 0x50."""
    m = machine("hello", drivers=("crash.sys",))
    assert m.run().stopped == "bug check"
    path = tmp_path_factory.mktemp("dump") / "crash.dmp"
    dump.write(m.executive, path)
    yield m, LiveTarget(m), open_dump(str(path))
    m.close()


def test_each_process_reads_its_own_page_at_the_same_address(pair):
    m, t = pair
    notepad, myapp = pid_of(m, "notepad"), pid_of(m, "myapp")
    assert t.read_virtual(MARKERS, 14, notepad) == b"notepad page 0"
    assert t.read_virtual(MARKERS + 0x2000, 12, myapp) == b"myapp page 2"
    assert t.translate(MARKERS, notepad) != t.translate(MARKERS, myapp)


def test_translate_agrees_with_the_walker_and_the_page_tables(pair):
    m, t = pair
    ex = m.executive
    for proc in m.processes:
        for va in (MARKERS + 0x123, 0x401000, proc.stack_high - 8):
            expected = mmu.walk(ex.mem, va, "read", cr3=proc.space.cr3, cpl=0,
                                cr0=ex.cpu.cr0, cr4=ex.cpu.cr4, efer=ex.cpu.efer).pa
            assert t.translate(va, proc.pid) == expected
            assert expected >> 12 == proc.space.lookup(va).pfn


def test_unmapped_memory_says_which_level_is_not_present(pair):
    m, t = pair
    pid = pid_of(m, "notepad")
    with pytest.raises(TargetError, match=r"^0x1000: not mapped: the PDE \(level 2\)"):
        t.read_virtual(0x1000, 8, pid)
    with pytest.raises(TargetError, match=r"not mapped: the PTE \(level 1\) at physical"):
        t.read_virtual(MARKERS + 0x3000, 1, pid)
    with pytest.raises(TargetError, match="not canonical"):
        t.translate(0x8000_0000_0000, pid)
    with pytest.raises(TargetError, match="beyond the end of RAM"):
        t.read_physical(m.mem.size - 4, 8)


def test_looking_changes_nothing_not_even_accessed_bits_or_the_tlb(pair):
    m, t = pair
    ram = m.mem.read(0, m.mem.size)
    tlb, fills = t.tlb(), m.executive.cpu.native.fills
    for proc in m.processes:
        t.read_virtual(0xFFFF_8000_0000_1000, 16, proc.pid)
        t.read_prefix(MARKERS, 0x4000, proc.pid)
        t.disassemble(proc.image.entry, 20, proc.pid)
    assert m.mem.read(0, m.mem.size) == ram
    assert t.tlb() == tlb and m.executive.cpu.native.fills == fills


def test_registers_of_the_cpu_and_of_a_process_that_is_not_on_it(pair):
    m, t = pair
    cpu = m.executive.cpu
    regs = t.registers()
    assert regs["rip"] == cpu.rip and regs["cr3"] == cpu.cr3 and regs["efer"] == cpu.efer
    assert t.register("eax") == regs["rax"] & 0xFFFF_FFFF
    assert t.register("$ah") == regs["rax"] >> 8 & 0xFF
    assert t.register("r8d") == regs["r8"] & 0xFFFF_FFFF
    other = next(p for p in m.processes if p.space.cr3 != cpu.cr3)
    saved = t.registers(other.pid)
    assert saved["cr3"] == other.space.cr3
    assert saved["rip"] == next(i.rip for i in t.process(other.pid).threads)
    with pytest.raises(TargetError, match="no register 'rxx'"):
        t.register("rxx")


def test_set_register_changes_only_the_part_named(pair):
    m, t = pair
    cpu = m.executive.cpu
    old = cpu.reg("rbx")
    try:
        t.set_register("rbx", 0x1122_3344_5566_7788)
        t.set_register("bl", 0xAA)
        assert cpu.reg("rbx") == 0x1122_3344_5566_77AA
        with pytest.raises(TargetError, match="only general registers"):
            t.set_register("cr3", 0)
    finally:
        cpu.set_reg("rbx", old)


def test_a_debugger_write_ignores_the_pages_rights(pair):
    m, t = pair
    pid = pid_of(m, "notepad")
    text = 0x401000                                  # read-only, executable
    old = t.read_virtual(text, 1, pid)
    t.write_virtual(text, b"\x90", pid)
    assert t.read_virtual(text, 1, pid) == b"\x90"
    t.write_virtual(text, old, pid)


def test_symbols_both_ways(pair):
    m, t = pair
    notepad = next(p for p in m.processes if p.name == "notepad")
    main = notepad.image.symbols["main"]
    assert t.resolve_symbol("main", notepad.pid) == main
    assert t.resolve_symbol("notepad!main") == main
    assert t.resolve_symbol("nt!DbgPrint") == exports.address_of("DbgPrint")
    assert t.symbolize(main, notepad.pid) == "notepad!main"
    assert t.symbolize(main + 0x12, notepad.pid) == "notepad!main+0x12"
    assert t.symbolize(0x7FFE_0000, notepad.pid) == "ntdll!RtlUserThreadExit"
    assert t.symbolize(0x1234) == "0x1234"
    with pytest.raises(TargetError, match=r"no symbol 'mian' \(did you mean 'main'\?\)"):
        t.resolve_symbol("mian", notepad.pid)
    with pytest.raises(TargetError, match="no module 'notpad'.*did you mean 'notepad'"):
        t.resolve_symbol("notpad!main")
    assert "notepad!main" in t.symbol_names()


def test_disassembly_follows_the_process_mode():
    m = machine("hello32", max_insns=2000)
    m.run()
    t = LiveTarget(m)
    proc = m.processes[0]
    insns = t.disassemble(proc.image.entry, 6, proc.pid)
    assert t.code_bits(proc.image.entry, proc.pid) == 32
    assert any("esp" in text or "ebp" in text for _, _, text in insns)
    assert not any("rsp" in text or "rbp" in text for _, _, text in insns)
    m.close()


def test_images_drivers_and_their_symbols():
    m = machine("hello", drivers=("echo.sys",))
    m.run()
    t = LiveTarget(m)
    (driver,) = [i for i in t.images() if i.kind == "driver"]
    assert driver.name == "echo.sys" and driver.pid is None
    read = t.resolve_symbol("echo.sys!Read")
    assert t.resolve_symbol("echo!Read") == read and driver.base <= read < driver.end
    assert t.symbolize(read + 4) == "echo.sys!Read+0x4"
    (app,) = [i for i in t.images() if i.kind == "app"]
    assert app.unloaded                          # hello has exited: its space is gone
    m.close()


def test_the_stlb_read_agrees_with_a_fresh_walk():
    m = two_processes()                   # fresh: a debugger write flushes the TLB
    t = LiveTarget(m)
    entries = t.tlb()
    assert entries and any(e.mode == "user" for e in entries)
    # Each process keeps its translations under its own PCID across switches: an entry is
    # checked against the tables of the space its PCID names.
    assert len({e.pcid for e in entries}) >= 2
    for e in entries:
        cpl = 3 if e.mode == "user" else 0
        tr = t.walk(e.vpage, None, "read", cpl, rflags=0, cr3=e.space)
        assert tr.pa & ~0xFFF == e.ppage
    m.close()


def test_vads_pfn_and_handles(pair):
    m, t = pair
    pid = pid_of(m, "myapp")
    proc = next(p for p in m.processes if p.pid == pid)
    (region,) = [r for r in t.regions(pid) if r.base == MARKERS]
    assert (region.end, region.state, region.type) == (MARKERS + 0x3000, "commit", "private")
    frame = proc.space.lookup(MARKERS).pfn
    record = t.pfn(frame)
    assert (record.use, record.owner, record.va) == ("private", pid, MARKERS)
    assert t.handles(pid) == []
    with pytest.raises(TargetError, match="beyond the end of RAM"):
        t.pfn(m.mem.frames)


def test_a_dump_reads_as_the_live_machine_did(crashed):
    m, live, dumped = crashed
    assert isinstance(dumped, DumpTarget) and not dumped.live
    assert dumped.registers() == live.registers()
    assert dumped.bugcheck().code == 0x50 and dumped.bugcheck().params == \
        live.bugcheck().params
    driver = next(i for i in dumped.images() if i.kind == "driver")
    assert dumped.read_virtual(driver.base, 64) == live.read_virtual(driver.base, 64)
    assert dumped.symbolize(live.register("rip")) == "crash.sys!DriverEntry+0x30"
    assert dumped.descriptor_tables() == live.descriptor_tables()
    pid = m.processes[0].pid
    assert dumped.regions(pid) == live.regions(pid)
    for frame in range(0, 0x80):
        assert dumped.pfn(frame) == live.pfn(frame)
    assert dumped.processes() == live.processes()
    assert dumped.current_pid() is None           # DriverEntry runs in the system context


def test_a_dump_is_read_only_and_has_no_tlb(crashed):
    _, _, dumped = crashed
    with pytest.raises(TargetError, match="read-only"):
        dumped.write_virtual(0xFFFF_8000_0000_0000, b"x")
    with pytest.raises(TargetError, match="read-only"):
        dumped.set_register("rax", 1)
    with pytest.raises(TargetError, match="no TLB"):
        dumped.tlb()
    with pytest.raises(TargetError, match="live machine"):
        dumped.check()


def test_bad_dump_files_are_one_line_errors(tmp_path):
    with pytest.raises(TargetError, match="cannot read"):
        open_dump(str(tmp_path / "missing.dmp"))
    junk = tmp_path / "junk.dmp"
    junk.write_bytes(b"not a dump at all")
    with pytest.raises(TargetError, match="not an emu crash dump") as err:
        open_dump(str(junk))
    assert "\n" not in str(err.value)


def test_a_dump_written_before_the_new_records_still_opens(crashed, tmp_path):
    m, live, _ = crashed
    header = dump.header(m.executive)
    for key in ("descriptors", "current_pid", "irql", "pfn", "irps", "devices"):
        del header[key]
    header["registers"] = {k: v for k, v in header["registers"].items()
                           if k in ("rip", "rsp", "rbp", "rflags", "cs", "ss", "cr2")}
    for p in header["processes"]:
        for key in ("image", "vads", "handles", "exception", "space", "exit_status"):
            p.pop(key, None)
    meta = json.dumps(header).encode()
    old = tmp_path / "old.dmp"
    old.write_bytes(dump.MAGIC + struct.pack("<Q", len(meta)) + meta +
                    zlib.compress(m.mem.read(0, m.mem.size), 1))
    t = open_dump(str(old))
    assert t.register("rip") == live.register("rip") and t.register("rax") == 0
    assert t.bugcheck().name == "PAGE_FAULT_IN_NONPAGED_AREA"
    assert t.regions(m.processes[0].pid) is None
    with pytest.raises(TargetError, match="older emu"):
        t.handles(m.processes[0].pid)
    with pytest.raises(TargetError, match="older emu"):
        t.pfn(1)
