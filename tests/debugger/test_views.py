"""The state views as text: checked against the walker, the page tables, the PFN database
and the executive's own records, on real guests."""

from __future__ import annotations

import struct

import pytest
from state_harness import MARKERS, machine, pause, pid_of, two_processes

from emu.debugger import analyze, mapview, memview, regview, views, walkview
from emu.debugger.memview import Format, Reader
from emu.debugger.target import LiveTarget, TargetError
from emu.hw import mmu
from emu.nt import layout
from emu.nt.events import Event
from emu.nt.mm import softpte

KERNEL_TEXT = layout.KERNEL_TEXT           # r-x, supervisor
BADREAD_ADDRESS = 0xFFFF_8000_0000_1000    # what badread reads


@pytest.fixture(scope="module")
def pair():
    m = two_processes()
    yield m, LiveTarget(m)
    m.close()


def oracle(m, pid, va, access, cpl):
    """emu.hw.mmu's own answer for this walk: a Translation or the PageFault."""
    ex = m.executive
    proc = next(p for p in m.processes if p.pid == pid)
    try:
        return mmu.walk(ex.mem, va, access, cr3=proc.space.cr3, cpl=cpl, cr0=ex.cpu.cr0,
                        cr4=ex.cpu.cr4, efer=ex.cpu.efer, rflags=ex.cpu.reg("rflags"))
    except mmu.PageFault as fault:
        return fault


def assert_steps_shown(text, result):
    for step in result.steps:
        assert f"{step.name:<5} [{step.entry_address:#x}] = {step.value:#018x}" in text


# -- walk --------------------------------------------------------------------------------

def test_walk_of_a_mapped_page(pair):
    m, t = pair
    pid = pid_of(m, "notepad")
    va = MARKERS + 0x1A8
    text = walkview.walk_text(t, va, pid, "write", 3)
    tr = oracle(m, pid, va, "write", 3)
    assert isinstance(tr, mmu.Translation)
    assert text.splitlines()[0] == (f'walk {va:#x} in process {pid} "notepad" '
                                    f"(CR3 {m.processes[0].space.cr3:#x}), write at ring 3")
    assert "VA 0x7f7939501a8 = PML4 15 | PDPT 478 | PD 156 | PT 336 | offset 0x1a8" in text
    assert_steps_shown(text, tr)
    assert f"physical address {tr.pa:#x}" in text
    assert "P RW US A D NX" in text and "rights so far: R W U -" in text
    assert "\n  a ring-3 write is allowed: this mode may R W - here\n" in text


@pytest.mark.parametrize("va, access, cpl, words", [
    (BADREAD_ADDRESS, "read", 3, "#PF: PML4E.US = 0: a ring-3 access to a supervisor page"),
    (0x403000, "fetch", 3, "#PF: PTE.NX = 1: an instruction fetch from a no-execute page"),
    (KERNEL_TEXT, "write", 0, "#PF: PTE.RW = 0: a write to a read-only page; CR0.WP = 1"),
    (0x401000, "write", 3, "#PF: PTE.RW = 0: a write to a read-only page"),
    (0x401000, "fetch", 0, "#PF: CR4.SMEP = 1: ring 0 may not fetch instructions from a "
                           "user page"),
])
def test_walk_names_the_entry_and_bit_that_fault(pair, va, access, cpl, words):
    m, t = pair
    pid = pid_of(m, "myapp")
    text = walkview.walk_text(t, va, pid, access, cpl)
    fault = oracle(m, pid, va, access, cpl)
    assert isinstance(fault, mmu.PageFault)
    assert_steps_shown(text, fault)
    assert words in text
    assert f"error code {int(fault.error_code):#x} = " in text
    assert "physical address" not in text


def test_walk_error_code_bits_spelled_out(pair):
    m, t = pair
    text = walkview.walk_text(t, 0x403000, pid_of(m, "myapp"), "fetch", 3)
    assert ("error code 0x15 = P=1 (protection violation) W/R=0 (read) U/S=1 (user mode) "
            "I/D=1 (instruction fetch)") in text


def test_walk_of_a_non_canonical_address(pair):
    _, t = pair
    text = walkview.walk_text(t, 0x8000_0000_0000, None, "read", 3)
    assert "#GP(0): 0x800000000000 is not canonical" in text and "PML4E" not in text


@pytest.mark.parametrize("offset, level, verdict", [
    (None, "the PDE (level 2) is not present", "the VADs say: free (in no allocation)"),
    (0x3000, "the PTE (level 1) is not present", "the VADs say: free"),
    ("guard", "the PTE (level 1) is not present",
     "committed PAGE_READWRITE|PAGE_GUARD: the first touch raises "
     "STATUS_GUARD_PAGE_VIOLATION (a stack: it grows one page)"),
])
def test_walk_of_a_missing_page_asks_the_vads(pair, offset, level, verdict):
    m, t = pair
    proc = next(p for p in m.processes if p.name == "notepad")
    va = {None: 0x1000, 0x3000: MARKERS + 0x3000, "guard": proc.stack_low - 0x1000}[offset]
    text = walkview.walk_text(t, va, proc.pid, "read", 3)
    assert f"#PF: {level} (P=0)" in text
    assert "error code 0x4 = P=0 (not present) W/R=0 (read) U/S=1 (user mode)" in text
    assert verdict in text


def test_walk_reads_transition_and_pagefile_ptes():
    m = two_processes()
    t = LiveTarget(m)
    proc = next(p for p in m.processes if p.name == "notepad")
    frame = proc.space.lookup(MARKERS).pfn
    pager = m.executive.mm.pager
    assert pager.empty_working_sets()
    text = walkview.walk_text(t, MARKERS, proc.pid, "read", 3)
    pte = proc.space.pte(MARKERS)
    assert softpte.decode(pte).state is softpte.PteState.TRANSITION
    assert f"PTE   [{proc.space.pte_address(MARKERS, create=False):#x}] = {pte:#018x}" in text
    assert (f"the PTE's software bits: transition, frame {frame:#x} (read/write): the frame "
            "still holds the page") in text
    pager.write_modified()
    pager.purge_standby()
    slot = softpte.decode(proc.space.pte(MARKERS)).slot
    text = walkview.walk_text(t, MARKERS, proc.pid, "read", 3)
    assert slot and (f"the PTE's software bits: in the pagefile, slot {slot} (read/write): "
                     "MmAccessFault reads the page back") in text
    with pytest.raises(TargetError, match=f"slot {slot}"):
        t.read_virtual(MARKERS, 1, proc.pid)
    m.close()


def test_walk_reads_a_demand_zero_pte():
    m = machine(("vmtest", ["demandzero"]))
    writes = []

    def after_reads(event, details):
        if event is Event.SYSCALL and details["number"] == 0x01:
            writes.append(1)
        return len(writes) == 2             # "read 8 pages: sum 0" is being printed

    def look(details):
        m.executive.mm.pager.empty_working_sets()     # the read-only zero pages go
        t = LiveTarget(m)
        return walkview.walk_text(t, 0x10000, None, "read", 3), \
            walkview.walk_text(t, 0x18000, None, "read", 3)

    read_page, untouched = pause(m, after_reads, look)
    assert "the PTE's software bits: demand zero (read/write): MmAccessFault gives the page " \
           "a zeroed frame" in read_page
    assert "PTE   [" in untouched and "= 0x0000000000000000  not present (P=0)" in untouched
    assert "the VADs say: committed PAGE_READWRITE (private): a demand-zero page" in untouched
    m.close()


# -- the memory manager's views ------------------------------------------------------------

def test_vtop_ptov_and_pfn_agree(pair):
    m, t = pair
    notepad = next(p for p in m.processes if p.name == "notepad")
    frame = notepad.space.lookup(MARKERS + 0x1000).pfn
    assert mapview.vtop_text(t, MARKERS + 0x1010, notepad.pid) == \
        f'{MARKERS + 0x1010:#x} -> physical {frame << 12 | 0x10:#x} (frame {frame:#x}), ' \
        f'in process {notepad.pid} "notepad"'
    text = mapview.ptov_text(t, frame << 12)
    (line,) = [x for x in text.splitlines()[1:]]
    assert f'process {notepad.pid} "notepad"' in line and f"{MARKERS + 0x1000:#018x}" in line
    text = mapview.pfn_text(t, frame << 12 | 0x123)
    pte_pa = notepad.space.pte_address(MARKERS + 0x1000, create=False)
    assert "use       private" in text and f"va        {MARKERS + 0x1000:#x}" in text
    assert f"PTE       at physical {pte_pa:#x} = {notepad.space.pte(MARKERS + 0x1000):#018x}: " \
           f"valid, frame {frame:#x}" in text


def test_ptov_of_a_page_table_names_what_it_maps(pair):
    m, t = pair
    proc = m.processes[0]
    assert "its PML4" in mapview.ptov_text(t, proc.space.cr3)
    pt = proc.space.pte_address(MARKERS, create=False) & ~0xFFF
    assert f"the PT for {MARKERS & ~0x1FFFFF:#x}-" in mapview.ptov_text(t, pt)


def test_vmmap_regions(pair):
    m, t = pair
    pid = pid_of(m, "myapp")
    text = mapview.vmmap_text(t, pid)
    assert text.splitlines()[0].startswith(f'user half of process {pid} "myapp"')
    rows = {line.split()[0]: line for line in text.splitlines() if line.startswith("  0x")}
    assert rows[f"{MARKERS:#018x}"].split()[1:] == [
        f"{MARKERS + 0x3000:#018x}", "12", "KiB", "commit", "rw-", "U", "PAGE_READWRITE",
        "private", "3", "private"]
    assert rows["0x0000000000401000"].split()[-4:] == ["PAGE_EXECUTE_READ", "image", "2",
                                                       "myapp"]
    assert "stack guard page" in text and "kernel stack 0 (boot)" in text
    assert "GDT and TSS" in rows["0xffff800000000000"]
    with pytest.raises(TargetError, match="no process 999"):
        mapview.vmmap_text(t, 999)


def test_tlb_view(pair):
    m, t = pair
    text = mapview.tlb_text(t)
    assert text.splitlines()[0].endswith(f"{len(t.tlb())} translation(s)")
    entry = t.tlb()[0]
    one = mapview.tlb_text(t, entry.vpage + 5)
    assert "agrees with the page tables" in one


# -- registers, descriptors, memory, stack -------------------------------------------------

def test_registers_and_control_registers(pair):
    m, t = pair
    text = regview.registers_text(t)
    cpu = m.executive.cpu
    assert f"rip {cpu.rip:#018x}  {t.symbolize(cpu.rip)}" in text
    assert "-> CPL 3 (user mode)" in text and "64-bit code" in text
    assert "cr0  0x0000000080010033  PG WP NE ET MP PE" in text
    assert "efer 0x0000000000000d01  NXE LMA LME SCE" in text
    bits = regview.control_text(t)
    assert "  bit 16  WP         1  write protect: R/W=0 binds ring 0 too" in bits
    assert "  bit 20  SMEP       1" in bits and "  bit 21  SMAP       0" in bits
    assert "  bit 11  NXE        1  no-execute enable" in bits
    assert regview.flags_text(0x246) == "IF ZF PF  IOPL=0"


def test_gdt_and_tss(pair):
    m, t = pair
    gdt = regview.gdt_text(t)
    assert ("  0x0030  64-bit code (execute/read), DPL 3, present, base 0x0, limit 0xfffff "
            "(4 KiB units)  [USER_CODE, used as 0x33]") in gdt
    assert "  0x0040  TSS (64-bit, available), DPL 0, present, base 0xffff800000000800" in gdt
    tss = regview.tss_text(t)
    rsp0 = int(tss.splitlines()[1].split()[1], 16)
    assert rsp0 in {th.kernel_stack_top for p in m.processes for th in p.threads}
    assert "no I/O permission bitmap" in tss


@pytest.mark.parametrize("spec, want", [
    ("4gx", Format(4, "x", 8)), ("s", Format(1, "s", 4)), ("3i", Format(3, "i", 4)),
    ("2a", Format(2, "a", 8)), ("8cb", Format(8, "c", 1)), ("c", Format(1, "c", 1)),
    ("10", Format(10, "x", 4)), ("hd", Format(1, "d", 2)),
])
def test_parse_format(spec, want):
    assert memview.parse_format(spec) == want


@pytest.mark.parametrize("spec, message", [
    ("4q", "bad format letter 'q'"), ("x4", "bad format '/x4'"), ("0x", "bad count 0")])
def test_parse_format_errors(spec, message):
    with pytest.raises(TargetError, match=message):
        memview.parse_format(spec)


def test_examine_formats(pair):
    m, t = pair
    pid = pid_of(m, "notepad")
    r = Reader(t, pid)
    assert memview.examine(r, MARKERS, Format(1, "s", 1))[0] == \
        [f'{MARKERS:#x}:\t"notepad page 0"']
    lines, err, end = memview.examine(r, MARKERS, Format(3, "x", 8))
    first, second = (int.from_bytes(w, "little") for w in (b"notepad ", b"page 0\0\0"))
    assert lines == [f"{MARKERS:#x}:\t{first:#018x}\t{second:#018x}",
                     f"{MARKERS + 16:#x}:\t0x0000000000000000"] and err is None
    assert end == MARKERS + 24
    assert memview.examine(r, MARKERS, Format(2, "c", 1))[0] == \
        [f"{MARKERS:#x}:\t110 'n'\t111 'o'"]
    assert memview.examine(r, MARKERS, Format(1, "d", 1))[0][0].endswith("\t110")
    assert memview.examine(r, MARKERS, Format(1, "t", 1))[0][0].endswith("\t01101110")
    assert memview.examine(r, MARKERS, Format(1, "o", 1))[0][0].endswith("\t0156")
    main = t.resolve_symbol("main", pid)
    (line,) = memview.examine(r, main, Format(1, "i", 1))[0]
    assert line.startswith(f"   {main:#x} <notepad!main>:\t")


def test_examine_stops_at_an_unmapped_page_saying_why(pair):
    m, t = pair
    r = Reader(t, pid_of(m, "notepad"))
    lines, err, _ = memview.examine(r, MARKERS + 0x2FF8, Format(4, "x", 4))
    assert len(lines) == 1 and len(lines[0].split("\t")) == 3
    assert err == (f"cannot access {MARKERS + 0x3000:#x}: not mapped: the PTE (level 1) at "
                   f"physical {m.processes[0].space.pte_address(MARKERS + 0x3000, create=False):#x}"
                   " is not present")


def test_examine_physical_memory(pair):
    m, t = pair
    lines, err, _ = memview.examine(Reader(t, None, physical=True), 0x1000, Format(2, "x", 8))
    words = struct.unpack("<2Q", m.mem.read(0x1000, 16))
    assert lines == [f"0x1000:\t{words[0]:#018x}\t{words[1]:#018x}"] and err is None
    _, err, _ = memview.examine(Reader(t, None, physical=True), m.mem.size - 4,
                                Format(2, "x", 8))
    assert "beyond the end of RAM" in err


def test_backtrace_at_a_fault():
    m = machine("badread")
    frames = pause(m, lambda e, d: e is Event.EXCEPTION,
                   lambda d: memview.backtrace_lines(LiveTarget(m)))
    assert frames[0] == "#0  0x0000000000401022 in badread!main+0x22"
    assert frames[1].startswith("#1  ") and "badread!_start+" in frames[1]
    assert len(frames) == 2
    m.close()


def test_backtrace_of_each_process(pair):
    m, t = pair
    # notepad waits in NtYieldExecution, a system-call stub with no frame of its own;
    # myapp was stopped inside printf.
    lines = memview.backtrace_lines(t, pid_of(m, "notepad"))
    assert [line.split(" in ")[1].split("+")[0] for line in lines] == \
        ["notepad!NtYieldExecution", "notepad!main", "notepad!_start"]
    lines = memview.backtrace_lines(t, pid_of(m, "myapp"))
    assert [line.split(" in ")[1].split("+")[0] for line in lines] == \
        ["myapp!put", "myapp!format", "myapp!printf", "myapp!main", "myapp!_start"]


def test_disassembly_marks_the_current_instruction(pair):
    m, t = pair
    rip = m.executive.cpu.rip
    lines = memview.disassembly(t, rip, 3, None, rip)
    assert lines[0].startswith(f"=> {rip:#x} <") and lines[1].startswith("   ")


# -- the executive's views -------------------------------------------------------------------

def test_ps_threads_and_lm(pair):
    m, t = pair
    current = t.current_pid()
    text = views.ps_text(t, view=pid_of(m, "notepad"))
    for p in m.processes:
        row = next(line for line in text.splitlines() if f" {p.pid}  {p.name}" in line)
        assert row.startswith(("*" if p.pid == current else " ") +
                              (">" if p.name == "notepad" else " "))
        assert f"{p.space.cr3:#x}" in row and "running" in row
    threads = views.threads_text(t)
    assert all(f"{th.tid:>4} {p.pid:>4}  {p.name}" in threads
               for p in m.processes for th in p.threads)
    lm = views.lm_text(t)
    assert sum(" app " in line for line in lm.splitlines()) == 2 and "notepad  [" in lm


def test_handles_view():
    m = machine("handles")
    # Pause at the second line printed: the event and its duplicate are both open.
    count = []

    def second_print(event, details):
        if event is Event.SYSCALL and details["number"] == 0x01:
            count.append(1)
        return len(count) == 2

    text = pause(m, second_print, lambda d: views.handles_text(LiveTarget(m), 12))
    lines = text.splitlines()
    assert lines[0] == 'handle table of process 12 "handles": 2 handle(s)'
    assert lines[1].startswith("  0x0004  Event    ") and "event, " in lines[1]
    assert lines[2].startswith("  0x0008  Event    ")
    m.close()


def test_irp_and_irql_after_the_dpc_bug_check():
    m = machine(("slowread", ["\\Device\\SlowNeither"]), ("counter", ["x", "3"]),
                drivers=("slowneither.sys",))
    assert m.run().stopped == "bug check"
    t = LiveTarget(m)
    (irp,) = t.irps()
    text = views.irp_text(t, irp.address)
    assert text.splitlines()[0] == f"IRP at {irp.address:#x}: pending"
    assert "RequestorMode     UserMode" in text and f"UserBuffer        {MARKERS:#x}" in text
    assert "MajorFunction   IRP_MJ_READ (0x3)" in text and "Length          64" in text
    assert "\\Device\\SlowNeither (slowneither.sys)" in text
    assert views.irps_text(t) == f"1 IRP(s) in flight:\n  {irp.address:#x}  pending"
    assert views.irql_text(t).startswith("IRQL 2 (DISPATCH_LEVEL) now")   # kept at the stop
    with pytest.raises(TargetError, match="not an IRP"):
        views.irp_text(t, layout.KERNEL_GDT)
    m.close()


def test_check_passes_then_finds_a_broken_rule():
    m = two_processes()
    t = LiveTarget(m)
    assert views.check_text(t).startswith("the books balance")
    proc = m.processes[0]
    frame = proc.space.lookup(MARKERS).pfn
    m.executive.mm.pfn.entries[frame].owner = 999
    text = views.check_text(t)
    assert text.startswith("1 broken rule(s):") and "owned by 999" in text
    m.close()


# -- analyze ------------------------------------------------------------------------------------

def test_analyze_a_process_killed_by_an_access_violation():
    m = machine("badread")
    m.run()
    text = analyze.analyze_text(LiveTarget(m))
    lines = text.splitlines()
    assert lines[0] == ('process 12 "badread" was ended by STATUS_ACCESS_VIOLATION '
                        "(0xC0000005): the thread used an address its rights do not allow")
    assert "  at rip 0x401022 (badread!main+0x22), ring 3: mov rax, qword ptr [rbx]" in lines
    assert "  access: a read of 0xffff800000001000" in lines
    assert "    #PF: PML4E.US = 0: a ring-3 access to a supervisor page" in lines
    assert "    error code 0x5 = P=1 (protection violation) W/R=0 (read) U/S=1 (user mode)" \
        in lines
    m.close()


def test_analyze_the_cpu_exception_of_a_stop():
    m = machine("nullwrite")

    def look(details):
        stop = type("Stop", (), {"reason": "exception", "exception": details["exc"]})()
        return analyze.analyze_text(LiveTarget(m), stop)

    text = pause(m, lambda e, d: e is Event.EXCEPTION, look)
    assert text.startswith("the CPU raised #PF page fault (stopped: exception)")
    assert "  at rip 0x401023 (nullwrite!main+0x23), ring 3, in process 12 \"nullwrite\"" in text
    assert "  access: a write of 0x0" in text
    assert "    #PF: the PDE (level 2) is not present (P=0)" in text
    assert "    the VADs say: free (in no allocation): an access violation" in text
    assert "    #0  0x0000000000401023 in nullwrite!main+0x23" in text
    m.close()


@pytest.mark.parametrize("driver, apps, words", [
    ("crash.sys", ["hello"], [
        "bug check 0x50 PAGE_FAULT_IN_NONPAGED_AREA: kernel-mode code referenced memory",
        "parameter 1  0xffff900000000000", "parameter 2  0x2 (write)",
        "parameter 3  0xfffff80001001030 (crash.sys!DriverEntry+0x30)",
        "responsible driver: crash.sys (crash.sys!DriverEntry+0x30)",
        "#PF: the PML4E (level 4) is not present (P=0)",
        "#0  0xfffff80001001030 in crash.sys!DriverEntry+0x30"]),
    ("rowrite.sys", ["hello"], [
        "bug check 0xbe ATTEMPTED_WRITE_TO_READONLY_MEMORY",
        "(rowrite.sys!read_only_value)", "the PTE",
        "#PF: PTE.RW = 0: a write to a read-only page; CR0.WP = 1"]),
    ("nxpool.sys", ["hello"], [
        "bug check 0xfc ATTEMPTED_EXECUTE_OF_NOEXECUTE_MEMORY",
        "#PF: PTE.NX = 1: an instruction fetch from a no-execute page",
        "(NonPagedPoolNx)", "in nxpool.sys!DriverEntry+"]),
    ("smep.sys", [("devread", ["\\Device\\Smep", "16", "0x401000"])], [
        "parameter 1  0x401000 (devread!main)",
        "#PF: CR4.SMEP = 1: ring 0 may not fetch instructions from a user page",
        "#1  0xfffff800010010e1 in smep.sys!Read+0x21"]),
    ("slowneither.sys", [("slowread", ["\\Device\\SlowNeither"]), ("counter", ["x", "3"])], [
        "bug check 0xd1 DRIVER_IRQL_NOT_LESS_OR_EQUAL",
        "parameter 2  2 (DISPATCH_LEVEL)", "parameter 3  0x1 (write)",
        "the address space loaded was that of process 20 \"counter\"",
        "in process 12 \"slowread\" it maps physical", "in process 20 \"counter\" it is not "
        "mapped"]),
    ("bugcheck.sys", ["hello"], [
        "bug check 0xe2 MANUALLY_INITIATED_CRASH", "parameter 4  0x4",
        "#0  0xffff800000004010 in nt!KeBugCheckEx",
        "the driver asked for this stop"]),
    ("twice.sys", [("devread", ["\\Device\\Twice"])], [
        "bug check 0x44 MULTIPLE_IRP_COMPLETE_REQUESTS: a driver completed an IRP",
        "in nt!IofCompleteRequest", "in twice.sys!Read+"]),
])
def test_analyze_bug_checks(driver, apps, words):
    m = machine(*apps, drivers=(driver,))
    assert m.run().stopped == "bug check"
    text = analyze.analyze_text(LiveTarget(m))
    for w in words:
        assert w in text, w
    m.close()


def test_analyze_with_nothing_to_say(pair):
    _, t = pair
    stop = type("Stop", (), {"reason": "step", "exception": None})()
    assert analyze.analyze_text(t, stop) == (
        "nothing to analyze: no CPU exception at this stop, no bug check, and no process "
        "ended with an exception (stopped: step)")


def test_analyze_at_the_end_prefers_the_dead_process_and_survives_its_lost_memory():
    m = machine("badread")
    seen = []
    m.executive.events.subscribe(lambda e, d: seen.append(d["exc"]) if e is Event.EXCEPTION
                                 else None)
    m.run()
    t = LiveTarget(m)
    ended = type("Stop", (), {"reason": type("R", (), {"value": "exited"})(),
                              "exception": seen[0]})()
    text = analyze.analyze_text(t, ended)
    assert text.startswith('process 12 "badread" was ended by')
    # Its PML4 is gone: the kernel half is walked in the loaded tables, and that is said.
    assert ("  the page walk of 0xffff800000001000 (read at ring 3) in the system address "
            f"space (CR3 {m.executive.mm.system.cr3:#x}):\n"
            '    (not process 12 "badread"\'s own tables: it has ended and its PML4 is gone; '
            "the kernel half is the same in every address space)") in text
    walk = walkview.walk_text(t, BADREAD_ADDRESS, 12, "read", 3)
    assert walk.splitlines()[0] == (f"walk {BADREAD_ADDRESS:#x} in the system address space "
                                    f"(CR3 {m.executive.mm.system.cr3:#x}), read at ring 3")
    late = type("Stop", (), {"reason": "catch", "exception": seen[0]})()
    text = analyze.analyze_text(t, late)
    assert "  instruction: (unreadable: 0x401022: not mapped" in text
    assert "    #PF: PML4E.US = 0: a ring-3 access to a supervisor page" in text
    m.close()


def test_direct_io_one_frame_two_addresses():
    m = machine(("slowread", ["\\Device\\SlowDirect"]), "victim", drivers=("slowdirect.sys",))
    dpcs = []

    def dpc_done(event, details):
        if event is Event.DPC:
            dpcs.append(details["routine"])
        return event is Event.KERNEL_CALL_DONE and details["routine"] in dpcs

    def look(details):
        t = LiveTarget(m)
        (irp,) = t.irps()
        return t.translate(MARKERS, 12), mapview.ptov_text(t, t.translate(MARKERS, 12)), \
            views.irp_text(t, irp.address)

    pa, ptov, irp = pause(m, dpc_done, look)
    lines = ptov.splitlines()
    assert len(lines) == 3
    assert lines[1].startswith('  process 12 "slowread"') and f"{MARKERS:#018x}" in lines[1]
    assert lines[2].startswith("  kernel (every process)       0xffffa18000000000")
    assert (f"StartVa {MARKERS:#x} + ByteOffset 0x0, ByteCount 64, frames {pa >> 12:#x}"
            in irp)
    assert "MappedSystemVa  0xffffa18000000000  (the same frames at a kernel address" in irp
    m.close()


# -- issue 16: PAT, where each entry's address comes from, A/D, the TLB's r-- ----------------

PAT_2M = 1 << 12                 # SDM Table 4-17: bit 12 of a PDE that maps a 2 MiB page


def test_walk_of_a_2mib_page_with_pat_keeps_bit_12_out_of_the_frame():
    """SDM Vol. 3A Table 4-17: in a PDE with PS=1, bit 12 is PAT and the frame is bits
    51:21; the walker's physical address, walk's frame, and ptov all agree."""
    m = two_processes()
    try:
        t = LiveTarget(m)
        proc = next(p for p in m.processes if p.name == "notepad")
        pt_pa = proc.space.pte_address(MARKERS, create=False) & ~0xFFF
        pde_pa = next(s.entry_address for s in oracle(m, proc.pid, MARKERS, "read", 3).steps
                      if s.level == 2)
        assert int.from_bytes(m.executive.mem.read(pde_pa, 8), "little") & ~0xFFF == pt_pa
        pde = 0x200000 | PAT_2M | int(mmu.PTE.PS | mmu.PTE.US | mmu.PTE.RW | mmu.PTE.P |
                                      mmu.PTE.A)
        t.write_physical(pde_pa, pde.to_bytes(8, "little"))
        va = MARKERS + 0x1A8
        tr = oracle(m, proc.pid, va, "read", 3)
        assert tr.pa == 0x200000 + (va & 0x1FFFFF)                 # the walker: no bit 12
        text = walkview.walk_text(t, va, proc.pid, "read", 3)
        assert (f"PDE   [{pde_pa:#x}] = {pde:#018x}  P RW US A PS PAT" in text)
        assert "-> 2 MiB page at 0x200000 " in text
        assert "PAT (bit 12 of a PDE that maps a page) = 1" in text
        assert f"physical address {tr.pa:#x} (2 MiB page at 0x200000 + offset " \
               f"{va & 0x1FFFFF:#x})" in text
        ptov = mapview.ptov_text(t, tr.pa)
        assert f"{va & ~0xFFF:#018x}  P RW US A PS PAT" in ptov
    finally:
        m.close()


def test_a_pte_names_bit_7_pat_not_ps():
    assert walkview.flag_names(0x80 | 0x1, 1) == "P PAT"
    assert walkview.flag_names(0x80 | 0x1, 2) == "P PS"
    assert walkview.flag_names(0x1080 | 0x1, 2) == "P PS PAT"
    assert walkview.flag_names(0x1000 | 0x1, 1) == "P"             # a PTE's bit 12: address


def test_walk_says_where_each_entry_address_comes_from(pair):
    m, t = pair
    proc = next(p for p in m.processes if p.name == "notepad")
    va = MARKERS + 0x1A8
    steps = oracle(m, proc.pid, va, "read", 3).steps
    text = walkview.walk_text(t, va, proc.pid, "read", 3)
    bases = [proc.space.cr3 & ~0xFFF] + [s.frame for s in steps[:-1]]
    sources = ["CR3", "the PML4E", "the PDPTE", "the PDE"]
    for step, base, source in zip(steps, bases, sources, strict=True):
        assert step.entry_address == base + 8 * step.index
        assert (f"{step.entry_address:#x} = {base:#x} (from {source}) + index {step.index} "
                f"x 8") in text


def test_walk_says_what_the_access_does_to_a_and_d(pair):
    m, t = pair
    pid = pid_of(m, "notepad")
    read = walkview.walk_text(t, MARKERS + 8, pid, "read", 3)
    assert ("A/D (SDM 4.8): A is already 1 in every entry this read uses; D (PTE) is 1: "
            "a read never changes it") in read
    text = walkview.walk_text(t, 0x401000, pid, "read", 3)
    assert "a read never changes it" in text
    fault = walkview.walk_text(t, 0x401000, pid, "write", 3)
    assert "A/D: the access faults: no A or D bit is set in the PTE" in fault


def test_walk_of_rip_is_a_fetch_by_default(pair):
    from state_harness import Harness
    m, t = pair
    h = Harness(t)
    out = h.run("walk $rip")
    assert out.splitlines()[0].endswith(", fetch at ring 3"), out
    assert h.run("walk $rsp").splitlines()[0].endswith(", read at ring 3")
    assert h.run("walk $rip read").splitlines()[0].endswith(", read at ring 3")


def test_tlb_explains_r_on_a_writable_clean_page():
    """A writable page whose PTE has D = 0 is cached r-- (a write must come back to the
    walker to set D): the entry says so. The STLB entry is the one a read fill makes."""
    from emu.debugger.records import TlbEntry
    m = two_processes()
    try:
        class Clean(LiveTarget):
            def tlb(self):
                return [TlbEntry("user", 0x403000, tr.pa & ~0xFFF, 1)]

        t = Clean(m)
        cpu = m.executive.cpu
        fault_free = mmu.walk(m.executive.mem, 0x403000, "read", cr3=cpu.cr3, cpl=3,
                              cr0=cpu.cr0, cr4=cpu.cr4, efer=cpu.efer)
        pte_pa = fault_free.steps[-1].entry_address
        pte = fault_free.steps[-1].value
        assert pte & mmu.PTE.D and pte & mmu.PTE.RW
        m.executive.mem.write(pte_pa, (pte & ~int(mmu.PTE.D)).to_bytes(8, "little"))
        tr = fault_free
        text = mapview.tlb_text(t, 0x403000)
        assert ("r-- though the page tables allow a write: D = 0 in its PTE, so write is "
                "granted only by a write fill, which sets D (SDM 4.8)") in text
        assert "STALE" not in text
    finally:
        m.close()


# -- pfn: every line from the machine's own books ------------------------------------------

def _pfn_expected(r, pte):
    """What pfn must say of frame record ``r`` whose PTE is ``pte``: the memory manager's own
    rule (emu.nt.mm.paging._trim_page: modified |= PTE.D)."""
    valid = pte is not None and pte & mmu.PTE.P
    dirty = bool(valid and pte & mmu.PTE.D)
    modified = r.use == "modified" or (r.use != "standby" and (r.modified or dirty))
    return modified, dirty


def test_pfn_never_contradicts_itself_under_paging():
    """Two pattern processes in 2 MiB, sampled every 100 page faults: for every frame, the
    pagefile and modified lines agree with the PTE's D bit and the PFN record; every
    combination the machine reaches is seen (dirty with and without a copy, clean with a
    copy, standby, made by the kernel)."""
    m = machine(("pattern", ["4", "1"]), ("pattern", ["4", "2"]), mem="2M")
    seen, faults = set(), [0]

    def sample(event, _details):
        if event is not Event.PAGE_FAULT:
            return
        faults[0] += 1
        if faults[0] % 100:
            return
        t = LiveTarget(m)
        for n in range(m.executive.mem.frames):
            r = t.pfn(n)
            if r.use not in ("private", "standby", "modified"):
                continue
            pte = int.from_bytes(m.executive.mem.read(r.pte_pa, 8), "little")
            text = mapview.pfn_text(t, n << 12)
            modified, dirty = _pfn_expected(r, pte)
            copy = r.slot is not None
            seen.add((r.use, dirty, copy, modified))
            assert (f"pagefile  slot {r.slot} holds a copy" if copy else "pagefile  no copy") \
                in text, text
            assert ("modified  yes" if modified else "modified  no") in text, text
            if not copy:
                assert "is current" not in text and "is stale" not in text, text
            if copy and not modified:
                assert f"the copy in slot {r.slot} is current" in text, text
            if copy and modified and r.use == "private":
                assert f"the copy in slot {r.slot}" in text and "is stale" in text, text
            if dirty:
                assert "PTE.D = 1" in text and " D" in text.split("PTE       ")[1], text

    m.executive.events.subscribe(sample)
    try:
        m.run()
    finally:
        m.close()
    assert {("private", True, False, True), ("private", False, True, False),
            ("private", True, True, True), ("standby", False, True, False),
            ("private", False, False, True)} <= seen, seen


def test_pfn_of_a_frame_on_the_modified_list():
    m = two_processes()
    try:
        t = LiveTarget(m)
        proc = next(p for p in m.processes if p.name == "notepad")
        frame = proc.space.lookup(MARKERS).pfn
        before = mapview.pfn_text(t, frame << 12)
        assert "pagefile  no copy" in before
        assert ("modified  yes: PTE.D = 1 and no copy anywhere: a trim puts it on the "
                "modified list") in before
        m.executive.mm.pager.empty_working_sets()
        text = mapview.pfn_text(t, frame << 12)
        assert "use       modified" in text and ": transition, frame" in text
        assert ("modified  yes: not written yet: the modified page writer stores it in a new "
                "slot before the frame is reused") in text
        m.executive.mm.pager.write_modified()
        text = mapview.pfn_text(t, frame << 12)
        slot = t.pfn(frame).slot
        assert "use       standby" in text and f"pagefile  slot {slot} holds a copy" in text
        assert (f"modified  no: the copy in slot {slot} is current (a standby frame is "
                "clean)") in text
    finally:
        m.close()
