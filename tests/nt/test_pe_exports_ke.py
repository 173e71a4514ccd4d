"""The Ke and Rtl exports PE drivers import (issue 12, item 4): events and waits, attaching,
time, strings and memory. Each runs from a PE driver of guest/drivers-pe/ built from the
WDK's headers; the tests check what the driver printed, guest memory, and bug checks."""

from __future__ import annotations

import struct
from pathlib import Path

import emurun
import pytest
from driverboot import DRIVERS, boot

from emu.hw.devices import SLOW_DEVICE_LATENCY, SLOW_DEVICE_VECTOR
from emu.nt import eprocess, exports, layout, ntos, wdm  # noqa: F401 (ntos: the exports)
from emu.nt.ntos import ke, rtl

ROOT = Path(__file__).resolve().parents[2]


def lines(m) -> list[str]:
    """The DbgPrint output, line by line."""
    return bytes(m.executive.debug_output).decode().splitlines()


def connect(m, driver, routine: str) -> None:
    """Connect ``routine`` of ``driver`` to the slow device's vector, as IoConnectInterrupt
    would (at the slow device's DIRQL, 5), without a KINTERRUPT in memory."""
    from emu.nt import kintr
    from emu.nt.kernel import DEVICE_IRQL

    m.executive.interrupts[SLOW_DEVICE_VECTOR] = kintr.Interrupt(
        SLOW_DEVICE_VECTOR, driver.symbols[routine], 0, 0, DEVICE_IRQL, DEVICE_IRQL)


# -- events and waits --------------------------------------------------------------------


def test_events_and_waits_at_passive_level(machine_factory, apps):
    m, (p,), r = boot(machine_factory, apps, [DRIVERS / "peevent.sys"], ("hello",))
    assert r.drivers[0].status == 0 and r.stopped is None
    assert lines(m) == [
        "peevent.sys: header type 0 size 6 state 0 list empty 1",
        "peevent.sys: set 0 set 1 read 1 reset 1 read 0 clear 0",
        "peevent.sys: notification wait 0x0 0x0 state 1",
        "peevent.sys: synchronization type 1 wait 0x0 state 0 poll 0x102",
        "peevent.sys: timeout 0x102 after 10000",
        "peevent.sys: any 0x1 all 0x0 states 1 0",
        "peevent.sys: delay 0x0 after 5000",
        "peevent.sys: absolute 0x102 after 20000 past 0x102 after 0",
    ]
    assert p.output == b"Hello, world!\n"


def test_the_event_header_is_wdm_h_s(machine_factory, apps):
    """The KEVENT in the driver's .data after the run: Type, Size, SignalState and an empty
    WaitListHead (Flink = Blink = its own address), byte for byte."""
    m, _, r = boot(machine_factory, apps, [DRIVERS / "peevent.sys"])
    event = r.drivers[0].image.symbols["notification"]
    raw = m.executive.kernel_read(event, wdm.KEVENT.size)
    head = event + wdm.KEVENT["Header.WaitListHead"]
    assert raw == bytes([wdm.NOTIFICATION_EVENT, 0, 6, 0]) + struct.pack("<iQQ", 1, head, head)


def test_an_interrupt_satisfies_a_wait(machine_factory, apps):
    """DriverEntry waits forever; the device's interrupt comes SLOW_DEVICE_LATENCY
    instructions later, its ISR sets the event, and the wait returns STATUS_SUCCESS with
    the clock advanced by exactly that (the synchronization event reset by the wait)."""
    m = machine_factory()
    driver = m.add_driver(DRIVERS / "pewaitirq.sys")
    connect(m, driver, "SlowIsr")
    start = m.executive.clock
    r = m.run()
    assert r.drivers[0].status == 0 and r.stopped is None
    assert lines(m) == [
        "pewaitirq.sys: SlowIsr, the event was 0, is 0",
        # and the 25 instructions DriverEntry runs from the shared page's last update (an
        # export's return) to its OUT: counted, since a started device needs the clock
        f"pewaitirq.sys: wait 0x0 after {SLOW_DEVICE_LATENCY + 25}, state 0",
        "pewaitirq.sys: wait 0x102",
    ]
    assert m.executive.clock - start >= SLOW_DEVICE_LATENCY + 10_000


def test_a_wait_at_device_irql_is_bug_check_0xb8(machine_factory, apps):
    """A zero timeout polls at any IRQL up to DISPATCH_LEVEL; a wait that must block at
    DISPATCH_LEVEL or above cannot switch threads: ATTEMPTED_SWITCH_FROM_DPC."""
    m = machine_factory()
    driver = m.add_driver(DRIVERS / "pewaitirq.sys")
    connect(m, driver, "WaitingIsr")
    r = m.run()
    bc = r.bugcheck
    assert bc is not None and bc.code == ke.ATTEMPTED_SWITCH_FROM_DPC == 0xB8
    assert bc.params[0] == bc.params[1] == bc.params[3] == 0
    assert layout.KERNEL_SPACE_START <= bc.params[2]            # the ISR's stack
    assert bc.driver == "pewaitirq.sys" and bc.location.startswith("pewaitirq.sys!WaitingIsr")
    assert bc.irql == 5
    assert lines(m) == ["pewaitirq.sys: WaitingIsr polls 0x102"]


def test_a_wait_nothing_can_satisfy_is_a_deadlock(apps):
    done = emurun.emu("run", "--driver", str(DRIVERS / "pedeadlock.sys"), str(apps / "hello"),
                      cwd=ROOT)
    assert done.returncode == 123
    assert done.stdout == "pedeadlock.sys: waiting forever\n"
    assert done.stderr.startswith("emu: every thread is waiting and nothing can wake one "
                                  "(deadlock)")


# -- time --------------------------------------------------------------------------------


def test_time_macros_read_kuser_shared_data(machine_factory, apps):
    """KeQuerySystemTime/KeQueryTickCount/KeQueryInterruptTime (wdm.h's macros), the time
    increment and the performance counter agree with the clock; a delay of two ticks moves
    each by exactly that; the shared page is read-only: 0xBE for a write."""
    m, _, r = boot(machine_factory, apps, [DRIVERS / "petime.sys"])
    assert lines(m) == [
        "petime.sys: increment 156250 frequency 10000000",
        f"petime.sys: system - interrupt {ke.SYSTEM_TIME_AT_BOOT} tick*increment <= interrupt 1",
        "petime.sys: after the delay: interrupt +312500 system +312500 ticks +2 "
        "counter +312500",
        "petime.sys: writing KUSER_SHARED_DATA",
    ]
    bc = r.bugcheck
    assert bc.code == 0xBE and bc.params[0] == layout.KI_USER_SHARED_DATA + 0x14
    assert bc.driver == "petime.sys"


def test_the_same_run_reads_the_same_times(machine_factory, apps):
    first, _, _ = boot(machine_factory, apps, [DRIVERS / "petime.sys"], ("hello",))
    again, _, _ = boot(machine_factory, apps, [DRIVERS / "petime.sys"], ("hello",))
    assert bytes(first.executive.debug_output) == bytes(again.executive.debug_output)


def test_kuser_shared_data_is_a_read_only_nx_supervisor_page(machine_factory, apps):
    """Mapped without U/S, without R/W, with NX; its times are KSYSTEM_TIME triplets
    (High1Time = High2Time) from the clock, and the constant fields as Windows 10 x64's."""
    from emu.hw import mmu
    from emu.hw.mmu import PTE

    m, _, _ = boot(machine_factory, apps, [DRIVERS / "peevent.sys"], ("hello",))
    ex = m.executive
    cpu = ex.cpu
    walk = mmu.walk(cpu.mem, layout.KI_USER_SHARED_DATA, "read", cr3=ex.mm.system.cr3,
                    cpl=0, cr0=cpu.cr0, cr4=cpu.cr4, efer=cpu.efer)
    leaf = walk.steps[-1].value
    assert leaf & PTE.NX and not leaf & PTE.RW and not leaf & PTE.US
    page = ex.kernel_read(layout.KI_USER_SHARED_DATA, wdm.KUSER_SHARED_DATA.size)
    f = wdm.KUSER_SHARED_DATA
    interrupt = struct.unpack_from("<IiI", page, f["InterruptTime"])
    system = struct.unpack_from("<IiI", page, f["SystemTime"])
    ticks = struct.unpack_from("<IiI", page, f["TickCount"])
    for _low, high1, high2 in (interrupt, system, ticks):
        assert high1 == high2
    now = interrupt[0] | interrupt[1] << 32
    assert now >= 15_000                                    # peevent waited 1.5 ms
    assert system[0] | system[1] << 32 == ke.SYSTEM_TIME_AT_BOOT + now
    assert ticks[0] | ticks[1] << 32 == now // 156_250
    assert struct.unpack_from("<I", page, f["TickCountMultiplier"])[0] == 0x0FA0_0000
    assert struct.unpack_from("<HH", page, f["ImageNumberLow"]) == (0x8664, 0x8664)
    assert struct.unpack_from("<II", page, f["NtMajorVersion"]) == (10, 0)
    assert page[f["NtSystemRoot"]:f["NtSystemRoot"] + 22] == "C:\\Windows\0".encode("utf-16-le")


# -- Rtl and the C run-time ----------------------------------------------------------------


def test_the_c_run_time_and_rtl_string_routines(machine_factory, apps):
    m, (p,), r = boot(machine_factory, apps, [DRIVERS / "pertl.sys"], ("hello",))
    assert r.drivers[0].status == 0 and r.stopped is None
    assert lines(m) == [
        "pertl.sys: memcpy [hello] memmove [hehello] memset [xxxxo] memcmp -1 0 1",
        "pertl.sys: strlen 5 wcslen 4 strcmp -1 0 1 strncmp 0 -1 wcscmp 1 _stricmp 0 "
        "_wcsicmp 0 -1",
        "pertl.sys: strcpy [hello] strncpy abZ 000",
        "pertl.sys: _snprintf 10 [x=42 y=ff.] -1 [x=42 y] 6 x _vsnprintf 9 [v 7 seven]",
        "pertl.sys: ansi 5 6 [ansi!] string 3 4",
        "pertl.sys: copy [Hell] 8 [Hello] 10 null 0",
        "pertl.sys: equal 0 1 compare <0 >0 =0 <0",
        "pertl.sys: append 0x0 [Hello, world] 0xc0000023 24 [Hello, world!] 26",
        "pertl.sys: comparememory 3 8",
        "pertl.sys: a2u 0x0 [caf?] 8 10 e9 1 free 0 0 overflow 0x80000005 8",
    ]
    # RtlAnsiStringToUnicodeString's buffer: PagedPool, 10 bytes, freed by RtlFreeUnicodeString
    (block,) = [b for b in m.executive.pools.blocks.values() if b.tag == rtl.TAG_STRING]
    assert (block.size, int(block.pool), block.freed) == (10, 1, True)
    assert p.output == b"Hello, world!\n"


def test_the_routines_are_imported_not_inlined():
    """Each routine the conformance driver tests is really called through its imports."""
    import pefile

    image = pefile.PE(str(DRIVERS / "pertl.sys"))
    names = {i.name.decode() for e in image.DIRECTORY_ENTRY_IMPORT for i in e.imports}
    assert {"memcpy", "memmove", "memset", "memcmp", "strlen", "strcmp", "strncmp", "strcpy",
            "strncpy", "wcslen", "wcscmp", "_stricmp", "_wcsicmp", "_snprintf", "_vsnprintf",
            "RtlCompareMemory", "RtlInitAnsiString", "RtlInitString", "RtlCopyUnicodeString",
            "RtlEqualUnicodeString", "RtlCompareUnicodeString", "RtlAppendUnicodeToString",
            "RtlAppendUnicodeStringToString", "RtlAnsiStringToUnicodeString",
            "RtlFreeUnicodeString"} <= names


def test_memcpy_to_an_unmapped_address_is_bug_check_0x50_in_nt_memcpy(machine_factory, apps):
    m, (p,), r = boot(machine_factory, apps, [DRIVERS / "pertlbad.sys"], ("hello",))
    memcpy = exports.pe_address_of("ntoskrnl.exe", "memcpy")
    bc = r.bugcheck
    assert bc.code == 0x50
    assert bc.params == (0xFFFF_9000_0000_0010, 2, memcpy, 0)
    assert bc.rip == memcpy and bc.registers["cr2"] == 0xFFFF_9000_0000_0010
    assert bc.driver == "pertlbad.sys" and bc.location.startswith("pertlbad.sys!")
    # The stack names the export it faulted in, then the driver's call of it.
    assert bc.backtrace[0] == "nt!memcpy" and bc.backtrace[1] == bc.location
    assert lines(m) == ["pertlbad.sys: memcpy to an unmapped kernel address"]
    assert p in r.unfinished


def test_memcpy_at_device_irql_is_bug_check_0xa(machine_factory, apps):
    m = machine_factory()
    driver = m.add_driver(DRIVERS / "pertlbad.sys")
    connect(m, driver, "CopyingIsr")
    r = m.run()
    memcpy = exports.pe_address_of("ntoskrnl.exe", "memcpy")
    bc = r.bugcheck
    assert bc.code == 0x0A and bc.params == (0xFFFF_9000_0000_0010, 5, 1, memcpy)
    assert bc.driver == "pertlbad.sys"
    assert lines(m) == ["pertlbad.sys: memcpy at DIRQL"]


# -- attaching -------------------------------------------------------------------------------

MARKERS = ("marker-AAAAAAAAAAAAAAAA", "marker-BBBBBBBBBBBBBBBB")


def markers(apps) -> tuple[str, str]:
    """MARKERS lengthened so the argument strings (the app's host path, then the marker)
    end right at USER_STACK_TOP: initial_stack rounds their start down to 16 bytes, so with
    any other length the 16 bytes peattach.sys reads below the top would hold the padding
    (and, one path length in 16, no marker at all): the test must not depend on where the
    checkout is."""
    used = len(str(apps / "hello")) + 1 + len(MARKERS[0]) + 1
    extra = -used % 16
    return tuple(m + m[-1] * extra for m in MARKERS)


def user_text(m, proc, va: int, n: int) -> str:
    """The text of ``n`` bytes at ``va`` in ``proc``'s own memory (up to a NUL), read from
    the frame its page table maps there."""
    mapping = proc.space.lookup(va)
    raw = m.executive.mem.read(mapping.pfn * layout.PAGE_SIZE + (va & 0xFFF), n)
    return raw.split(b"\0")[0].decode()


def poke(driver, symbol: str, value: int) -> None:
    """Set a driver's 64-bit global before DriverEntry runs (in its image, not yet mapped)."""
    va = driver.symbols[symbol]
    driver.pages[va & ~0xFFF][va & 0xFFF:(va & 0xFFF) + 8] = struct.pack("<Q", value)


def test_attaching_reads_each_process_s_own_memory(machine_factory, apps):
    """The same user address read while attached to each of two processes, nested: each
    one's own bytes; the KAPC_STATEs hold NULL, the outer process, 1 (attached to itself);
    the dereferences release the lookups; detaching with the outer state first leaves the
    thread unattached, so the inner state's detach is bug check 0x6."""
    m, (a, b), r = boot(machine_factory, apps, [DRIVERS / "peattach.sys"],
                        *(("hello", marker) for marker in markers(apps)))
    assert (a.pid, b.pid) == (12, 20)            # 4 and 8: the System process and thread
    address = layout.USER_STACK_TOP - 16          # where the last argument ends
    text_a, text_b = user_text(m, a, address, 16), user_text(m, b, address, 16)
    assert text_a and set(text_a) == {"A"} and set(text_b) == {"B"}
    assert lines(m) == [
        "peattach.sys: lookup 0xc000000d 0x0 0x0 distinct 1 type 3",
        f"peattach.sys: A [{text_a}]",
        f"peattach.sys: B [{text_b}]",
        f"peattach.sys: B again [{text_b}]",
        f"peattach.sys: A again [{text_a}]",
        "peattach.sys: saved 1 1 1 dereference 0 0",
        "peattach.sys: detached with the outer state first",
    ]
    bc = r.bugcheck
    assert bc.code == ke.INVALID_PROCESS_DETACH_ATTEMPT == 0x6 and bc.params == (0, 0, 0, 0)
    assert bc.driver == "peattach.sys"


def test_an_attached_driver_pages_the_target_s_memory_back_in(machine_factory, apps):
    """Every user page trimmed before the run (MemoryEmptyWorkingSets): the driver's reads
    while attached fault them back in, from the attached process (not the system context
    DriverEntry runs in): the same bytes, and the processes then run as usual."""
    m = machine_factory()
    m.add_driver(DRIVERS / "peattach.sys")
    a = m.spawn(apps / "hello", [markers(apps)[0]])
    b = m.spawn(apps / "hello", [markers(apps)[1]])
    address = layout.USER_STACK_TOP - 16
    text_a, text_b = user_text(m, a, address, 16), user_text(m, b, address, 16)
    assert m.executive.mm.pager.empty_working_sets() > 0
    assert a.space.lookup(address) is None                      # not present now
    r = m.run()
    assert lines(m)[1:3] == [f"peattach.sys: A [{text_a}]", f"peattach.sys: B [{text_b}]"]
    assert a.space.lookup(address) is not None and b.space.lookup(address) is not None
    assert r.bugcheck.code == 0x6


def test_an_attach_switches_cr3_and_a_detach_switches_back(machine_factory, apps):
    """Watched from the CR3 loads: A, B (B again: nothing), A, the system's; then the
    misuse's A, B and the system's."""
    from emu.nt.events import Event

    m = machine_factory()
    m.add_driver(DRIVERS / "peattach.sys")
    a = m.spawn(apps / "hello", [markers(apps)[0]])
    b = m.spawn(apps / "hello", [markers(apps)[1]])
    loads = []
    m.executive.events.subscribe(
        lambda event, details: loads.append(details["new"]) if event is Event.CR3_LOAD
        else None)
    r = m.run()
    system = m.executive.mm.system.cr3
    assert loads == [a.space.cr3, b.space.cr3, a.space.cr3, system,
                     a.space.cr3, b.space.cr3, system]
    assert r.bugcheck.code == 0x6


def test_attaching_to_no_process_is_bug_check_0x5(machine_factory, apps):
    """A lookup of an id no process has fails (STATUS_INVALID_PARAMETER, PEPROCESS NULL), and
    KeStackAttachProcess(NULL): INVALID_PROCESS_ATTACH_ATTEMPT (the target; the process
    DriverEntry's thread is in, the System process; 0; 0)."""
    m = machine_factory()
    driver = m.add_driver(DRIVERS / "peattach.sys")
    poke(driver, "TargetA", 0x1234)
    m.spawn(apps / "hello", [MARKERS[0]])
    m.spawn(apps / "hello", [MARKERS[1]])
    r = m.run()
    assert lines(m) == ["peattach.sys: lookup 0xc000000d 0xc000000d 0x0 distinct 0 type -1"]
    assert r.bugcheck.code == ke.INVALID_PROCESS_ATTACH_ATTEMPT == 0x5
    assert r.bugcheck.params == (0, eprocess.of(m.executive, None), 0, 0)
    assert r.bugcheck.driver == "peattach.sys"


def test_a_dereference_too_many_is_bug_check_0x18(machine_factory, apps):
    m, (p,), r = boot(machine_factory, apps, [DRIVERS / "pederef.sys"], ("hello",))
    process = eprocess.of(m.executive, None)      # id 4: the System process, not the app
    assert p.pid != 4 and process != eprocess.of(m.executive, p)
    assert lines(m) == ["pederef.sys: 0"]
    assert r.bugcheck.code == 0x18 and r.bugcheck.params == (0, process, 0, 0)
    raw = m.executive.kernel_read(process, wdm.DISPATCHER_HEADER.size)
    assert raw[0] == eprocess.PROCESS_OBJECT and struct.unpack_from("<i", raw, 4)[0] == 0
    assert raw[2] == 0x80 // 4                    # DISPATCHER_HEADER.Size: a 0x80-byte object


def test_a_dispatch_routine_waits_for_its_device_in_the_requester_s_context(machine_factory,
                                                                           apps):
    """devread's read waits in the driver; the interrupt is taken meanwhile, in devread's
    thread and address space, on its kernel stack below the waiting routine (whose frames
    survive: the read completes with the driver's bytes); the other app runs after."""
    from emu.nt.events import Event

    m = machine_factory()
    driver = m.add_driver(DRIVERS / "pewaitio.sys")
    connect(m, driver, "SlowIsr")
    reader = m.spawn(apps / "devread", ["\\??\\PeWait"])
    other = m.spawn(apps / "hello", [])
    interrupts = []
    m.executive.events.subscribe(
        lambda event, details: interrupts.append((details["thread"], m.executive.cpu.cr3))
        if event is Event.INTERRUPT else None)
    r = m.run()
    assert r.bugcheck is None and r.stopped is None
    assert reader.output == b"status 0x00000000\nread 19 bytes\ndata: woken by the device\n"
    assert other.output == b"Hello, world!\n"
    # Two threads: the clock counts the routine's instructions before its OUT too.
    (line,) = lines(m)
    assert line.startswith("pewaitio.sys: Read waited 0x0 for ")
    assert SLOW_DEVICE_LATENCY <= int(line.split()[-1]) < SLOW_DEVICE_LATENCY + 100
    ((thread, _),) = interrupts
    assert thread.process is reader


def test_more_wait_objects_than_wait_blocks_is_bug_check_0xc(machine_factory, apps):
    m, _, r = boot(machine_factory, apps, [DRIVERS / "pewaitmany.sys"])
    assert r.bugcheck.code == ke.MAXIMUM_WAIT_OBJECTS_EXCEEDED == 0x0C
    assert r.bugcheck.params == (0, 0, 0, 0) and r.bugcheck.driver == "pewaitmany.sys"
    assert lines(m) == ["pewaitmany.sys: waiting on 4 objects without a WaitBlockArray"]


def test_an_event_at_a_bad_address_faults_inside_nt_kesetevent(machine_factory, apps):
    m, _, r = boot(machine_factory, apps, [DRIVERS / "pebadevent.sys"])
    set_event = exports.pe_address_of("ntoskrnl.exe", "KeSetEvent")
    assert r.bugcheck.code == 0x50
    assert r.bugcheck.params == (0xFFFF_9000_0000_0004, 0, set_event, 0)
    assert r.bugcheck.driver == "pebadevent.sys"
    assert lines(m) == ["pebadevent.sys: KeSetEvent on an unmapped address"]


@pytest.mark.parametrize("routine", ["fill", "copy", "mismatch"])
def test_a_huge_count_runs_to_the_first_bad_page_without_host_memory(machine_factory,
                                                                     routine):
    """memset/memcpy/memcmp with a count of 2^62 over one pool page: each page is touched as
    the routine reaches it, so the first unmapped page faults (0x50 at its first byte), and
    nothing of the count's size is ever allocated on the host."""
    from emu.nt.bugcheck import BugCheck
    from emu.nt.pool import PoolType

    ex = machine_factory().executive
    block = ex.pools.allocate(PoolType.NonPagedPool, 0x40, 0x74736554)
    end = (block & ~0xFFF) + 0x1000                         # the page after the block's
    with pytest.raises(BugCheck) as caught:
        if routine == "fill":
            rtl.fill(ex, block, 0, 1 << 62)
        elif routine == "copy":
            rtl.copy(ex, block, block, 1 << 62)
        else:
            rtl.mismatch(ex, block, block, 1 << 62)
    assert caught.value.code == 0x50 and caught.value.params[0] == end
