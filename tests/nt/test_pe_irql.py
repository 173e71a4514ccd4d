"""The IRQL is CR8 (issue 12, item 3): PE drivers built from the WDK's <ntddk.h>, whose x64
KeGetCurrentIrql / KeRaiseIrql / KeLowerIrql are inline CR8 moves, read and write the
executive's IRQL; DPCs, spin locks and interrupts follow it (guest/drivers-pe/peirql*.c)."""

from __future__ import annotations

import emurun
import pytest

from emu.hw.cr8 import find_moves
from emu.nt.bugcheck import BugCheckCode
from emu.nt.status import NTSTATUS
from tests.nt.driverboot import DRIVERS, boot

PEIRQL = DRIVERS / "peirql.sys"
PEIRQLISR = DRIVERS / "peirqlisr.sys"
PEIRQLPAGE = DRIVERS / "peirqlpage.sys"


def debug_lines(m) -> list[str]:
    return bytes(m.executive.debug_output).decode().splitlines()


def test_driver_entry_reads_irql_0_and_its_dpc_runs_at_2_when_the_irql_drops(
        machine_factory, apps):
    m, (p,), r = boot(machine_factory, apps, [PEIRQL], ("hello",))
    assert r.bugcheck is None and [d.status for d in r.drivers] == [0]
    assert debug_lines(m) == [
        "peirql.sys: DriverEntry at IRQL 0",
        # KeRaiseIrql is `mov cr8`: the DPC queued at DISPATCH_LEVEL waits, and a second
        # KeInsertQueueDpc of the queued KDPC is FALSE (its arguments are not taken).
        "peirql.sys: KeRaiseIrql: IRQL 2, was 0; KeInsertQueueDpc 1, again 0; "
        "the DPC ran 0 times",
        # KeLowerIrql(0), a `mov cr8`, lets it run, at DISPATCH_LEVEL, from its KDPC.
        "peirql.sys: DPC at IRQL 2, context dpc-context, arguments 0000000000001111 "
        "0000000000002222, its KDPC yes",
        "peirql.sys: KeLowerIrql: IRQL 0; the DPC ran 1 times",
        "peirql.sys: KeRemoveQueueDpc 1, again 0; the DPC ran 1 times",
        "peirql.sys: spin lock held at IRQL 2 (lock 1), released at IRQL 0 (lock 0)",
        # A DPC queued while the lock is held (DISPATCH_LEVEL) runs in KeReleaseSpinLock.
        "peirql.sys: DPC at IRQL 2, context dpc-context, arguments 0000000000000000 "
        "0000000000000000, its KDPC yes",
        "peirql.sys: a DPC queued under the spin lock ran 1 times before KeReleaseSpinLock, "
        "2 after",
        "peirql.sys: exports: KfRaiseIrql(2) was 0, KeGetCurrentIrql 2, "
        "KeRaiseIrqlToDpcLevel was 0, CR8 2",
    ]
    assert p.output == b"Hello, world!\n"
    assert m.executive.irql == 0 and m.executive.cpu.cr8.value == 0


def test_the_driver_s_cr8_moves_are_found_and_hooked(machine_factory, apps):
    m, _, r = boot(machine_factory, apps, [PEIRQL])
    image = r.drivers[0].image
    moves = m.executive.cpu.cr8.moves
    assert moves and all(image.base <= mv.address < image.end for mv in moves)
    assert {mv.write for mv in moves} == {True, False}


def test_an_interrupt_waits_while_cr8_masks_it_and_comes_when_it_is_lowered(
        machine_factory, apps):
    from emu.hw.devices import SLOW_DEVICE_LATENCY, SLOW_DEVICE_VECTOR
    from emu.nt.events import Event

    m = machine_factory()
    seen = []
    m.executive.events.subscribe(lambda e, d: e in (Event.INTERRUPT, Event.DPC) and seen.append(
        (e, d.get("vector"), m.executive.irql, d["clock"])))
    m.add_driver(PEIRQLISR)
    m.spawn(apps / "hello", [])
    r = m.run()
    assert r.bugcheck is None and [d.status for d in r.drivers] == [0]
    assert debug_lines(m) == [
        "peirqlisr.sys: IoConnectInterrupt 0x00000000",
        # IRQL 5 (a `mov cr8`) masks the device's DIRQL 5: the spin outlasts its latency.
        "peirqlisr.sys: at IRQL 5 the ISR ran 0 times in 100000 spins",
        # KeLowerIrql(4) unmasks it: the ISR runs then, at its SynchronizeIrql (6) ...
        "peirqlisr.sys: ISR at IRQL 6, context isr-context, its KINTERRUPT yes",
        # ... and the DPC it queued waits while the IRQL is 4, not below DISPATCH_LEVEL.
        "peirqlisr.sys: at IRQL 4 the ISR ran 1 times, the DPC 0 times",
        "peirqlisr.sys: DPC at IRQL 2",
        "peirqlisr.sys: at IRQL 0 the DPC ran 1 times",
    ]
    (interrupt, i_vector, i_irql, i_clock), (dpc, _, d_irql, d_clock) = seen
    assert (interrupt, i_vector, i_irql) == (Event.INTERRUPT, SLOW_DEVICE_VECTOR, 6)
    assert (dpc, d_irql) == (Event.DPC, 2) and d_clock > i_clock
    # The device started before any instruction was counted (clock 0: DriverEntry runs at
    # full speed until its OUT), so its line went up at the latency; the ISR came tens of
    # thousands of instructions later, at the KeLowerIrql(4) after the spin: it was pending.
    assert i_clock > SLOW_DEVICE_LATENCY + 50_000
    assert m.executive.interrupts == {} and m.executive.pending_interrupts == set()


def test_a_pageable_user_page_at_an_irql_raised_through_cr8_is_bug_check_0xd1(
        machine_factory, apps):
    m = machine_factory()
    m.add_driver(PEIRQLPAGE)
    proc = m.spawn(apps / "pagedrv", ["user-passive"])
    assert m.run().bugcheck is None
    assert proc.output == b"pagedrv: user sum 0x000000000007f800\n"

    m = machine_factory()
    m.add_driver(PEIRQLPAGE)
    proc = m.spawn(apps / "pagedrv", ["user-dispatch"])
    r = m.run()
    bc = r.bugcheck
    # (the address read, the IRQL: 2, 0 = a read, the RIP of the read), at the IRQL the
    # driver's KeRaiseIrql (`mov cr8`) set.
    assert bc.code == BugCheckCode.DRIVER_IRQL_NOT_LESS_OR_EQUAL
    address, irql, access, rip = bc.params
    assert irql == 2 and access == 0 and rip == bc.rip and bc.irql == 2
    assert 0 < address < 0x8000_0000_0000 and bc.driver == "peirqlpage.sys"
    assert r.drivers[0].image.base <= rip < r.drivers[0].image.end
    assert "in the pagefile" in bc.detail
    assert m.executive.irql == 2                 # CR8 as it was at the fault


@pytest.mark.parametrize("instruction, text", [("mov-cr8", "mov cr8, rax"),
                                                ("read-cr8", "mov rax, cr8")])
def test_a_cr8_move_at_ring_3_is_a_privileged_instruction(machine_factory, apps, instruction,
                                                          text):
    # #GP(0) at CPL 3 (SDM Vol. 2B, MOV to/from control registers): Unicorn's own check.
    m = machine_factory()
    proc = m.spawn(apps / "privileged", [instruction])
    m.run()
    assert proc.exception.code == NTSTATUS.STATUS_PRIVILEGED_INSTRUCTION
    assert proc.exception.instruction == text
    assert m.executive.irql == 0


def test_the_debugger_s_irql_reads_cr8_at_a_breakpoint_after_a_mov_cr8():
    # Break right after DriverEntry's KeRaiseIrql(DISPATCH_LEVEL): its `mov cr8, reg`, the
    # first CR8 write in the image (found the way the machine finds it).

    import pefile

    from emu.nt import layout

    image = pefile.PE(str(PEIRQL))
    text = next(s for s in image.sections if s.Name.rstrip(b"\0") == b".text")
    base = layout.KERNEL_DRIVERS + text.VirtualAddress
    first = next(mv for mv in find_moves(base, text.get_data()) if mv.write)
    after = first.address + first.size
    r = emurun.emu("debug", "--stop-at-driver", "--driver", str(PEIRQL),
                   str(DRIVERS.parent / "apps" / "hello"),
                   input=f"irql\nbreak *{after:#x}\nc\nirql\ninfo cr\nregisters\nc\n", timeout=120)
    assert r.returncode == 0, r.stderr
    before, at_break = r.stdout.split("Breakpoint 1", 1)
    assert "IRQL 0 (PASSIVE_LEVEL) now" in before
    assert f"{after:#x}" in at_break.splitlines()[0].lower().replace("'", "")
    assert "IRQL 2 (DISPATCH_LEVEL) now" in at_break
    assert "cr8 = 0x0000000000000002" in at_break
    assert "cr8  0x0000000000000002  the IRQL" in at_break


@pytest.mark.parametrize("name, code, params, text", [
    # #GP(0) on a reserved CR8 bit, at ring 0: KiGeneralProtectionFault's
    # STATUS_ACCESS_VIOLATION, dispatched and not handled in DriverEntry's system thread:
    # 0x7E (code, address, the EXCEPTION_RECORD, the CONTEXT).
    ("peirqlgp", BugCheckCode.SYSTEM_THREAD_EXCEPTION_NOT_HANDLED,
     (0xC0000005, "rip", "any", "any"),
     "peirqlgp.sys: writing 0x12 to CR8"),
    ("peirqlraise", BugCheckCode.IRQL_NOT_GREATER_OR_EQUAL, (1, 2, 0, 0),
     "peirqlraise.sys: KfRaiseIrql(APC_LEVEL) at IRQL 2"),
    ("peirqlspin", BugCheckCode.SPIN_LOCK_ALREADY_OWNED, ("lock", 0, 0, 0), None),
])
def test_irql_misuse_is_the_bug_check_windows_gives(machine_factory, apps, name, code, params,
                                                    text):
    m, _, r = boot(machine_factory, apps, [DRIVERS / f"{name}.sys"], ("hello",))
    bc = r.bugcheck
    assert bc is not None and bc.code == code and bc.driver == f"{name}.sys"
    lines = debug_lines(m)
    if params[0] == "lock":
        lock = int(lines[0].split("lock ")[1].split()[0], 16)
        assert lines == [f"peirqlspin.sys: lock {lock:016X} held at IRQL 2, acquiring it "
                         "again"]
        params = (lock, *params[1:])
    else:
        assert lines == [text]
    assert bc.params == tuple(bc.rip if p == "rip" else actual if p == "any" else p
                              for p, actual in zip(params, bc.params, strict=True))
    if name == "peirqlgp":
        assert bc.instruction == "mov cr8, rax" and m.executive.irql == 0
        assert "CR8 bits 63:4 are reserved" in bc.detail
    if name == "peirqlspin":
        from emu.debugger.analyze import analyze_text
        from emu.debugger.live import LiveTarget

        text = analyze_text(LiveTarget(m))
        assert text.startswith("bug check 0xf SPIN_LOCK_ALREADY_OWNED: a spin lock was "
                               "acquired by the processor that holds it")
        assert f"parameter 1  {params[0]:#x} (peirqlspin.sys!" in text


def test_init_s_cr8_hooks_go_with_init_and_text_s_stay(machine_factory, apps):
    from emu.nt.events import Event

    m = machine_factory()
    at_load = []
    m.executive.events.subscribe(lambda e, d: e is Event.DRIVER_LOAD and at_load.append(
        [mv.address for mv in m.executive.cpu.cr8.moves]))
    m.add_driver(DRIVERS / "peirqlinit.sys")
    m.spawn(apps / "hello", [])
    r = m.run()
    assert r.bugcheck is None
    assert debug_lines(m) == ["peirqlinit.sys: DriverEntry in INIT at IRQL 0",
                              "peirqlinit.sys: DriverUnload at IRQL 0"]
    init = r.drivers[0].image.discardable
    (loaded,) = at_load
    in_init = [a for a in loaded if a & ~0xFFF in init]
    assert in_init and len(in_init) < len(loaded)          # moves in INIT and in .text
    assert [mv.address for mv in m.executive.cpu.cr8.moves] == \
        [a for a in loaded if a not in in_init]


@pytest.mark.parametrize("others", [("victim",), ()])
def test_io_request_dpc_from_the_isr_runs_the_device_s_dpc_at_2(machine_factory, apps,
                                                                 others):
    # wdm.h's IoInitializeDpcRequest / IoRequestDpc (KeInitializeDpc / KeInsertQueueDpc over
    # DeviceObject->Dpc), the ISR at its DIRQL, the DPC at DISPATCH_LEVEL in whatever context
    # the interrupt came in (the victim's, or the idle system's).
    commands = [("slowread", "\\Device\\PeDpc")] + ([(others[0],)] if others else [])
    m, procs, r = boot(machine_factory, apps, [DRIVERS / "pedpc.sys"], *commands)
    assert r.bugcheck is None and r.unfinished == []
    assert debug_lines(m) == ["pedpc.sys: read started at IRQL 0",
                              "pedpc.sys: ISR at IRQL 5",
                              "pedpc.sys: DPC at IRQL 2, for its device yes, the IRP yes"]
    assert procs[0].output == (b"status 0x00000000\nread 28 bytes\n"
                               b"my page: data from the slow device\n")
    if others:
        assert procs[1].output == b"my page: victim's own data, nobody else's\n"
    # Its DriverUnload disconnected the interrupt.
    assert m.executive.interrupts == {}


def test_stepping_over_each_cr8_move_is_the_same_run():
    # One instruction at a time, every run ends at the boundary after a CR8 move at some
    # point (the move completes there, emu.hw.cr8): the same output and the same count of
    # instructions as one run without stops.

    def debug(script: str) -> str:
        r = emurun.emu("debug", "--stop-at-driver", "--driver", str(PEIRQL),
                       str(DRIVERS.parent / "apps" / "hello"), input=script, timeout=300)
        assert r.returncode == 0, r.stderr
        return r.stdout

    def printed(out: str) -> list[str]:
        return [line for line in out.splitlines() if line.startswith("peirql.sys:")]

    free, stepped = debug("c\nposition\n"), debug("si\n" * 300 + "c\nposition\n")
    assert printed(stepped) == printed(free) and len(printed(free)) == 9
    assert stepped.count("mov cr8") + stepped.count(", cr8") >= 10     # stepped over moves
    position = [line for line in free.splitlines() if "since boot" in line]
    assert position and position == [line for line in stepped.splitlines()
                                     if "since boot" in line]


def test_a_dispatch_routine_returning_above_passive_level_is_bug_check_0x4a(machine_factory,
                                                                            apps):
    from emu.debugger.analyze import analyze_text
    from emu.debugger.live import LiveTarget

    m, (p,), r = boot(machine_factory, apps, [DRIVERS / "peirqlleak.sys"],
                      ("devread", "\\??\\PeIrqlLeak"))
    bc = r.bugcheck
    assert debug_lines(m) == ["peirqlleak.sys: read at IRQL 2, returning without "
                              "KeLowerIrql(0)"]
    image = r.drivers[0].image
    read = m.executive.kernel_read_u64(r.drivers[0].driver_object + 0x70 + 8 * 3)
    # (the routine the system call ran: IRP_MJ_READ's, the IRQL it was left at, 0, 0)
    assert bc.code == BugCheckCode.IRQL_GT_ZERO_AT_SYSTEM_SERVICE
    assert bc.params == (read, 2, 0, 0) and image.base <= read < image.end
    assert bc.irql == 2 and m.executive.irql == 2 and bc.driver == "peirqlleak.sys"
    assert p.output == b""                       # the read never returned to it
    assert analyze_text(LiveTarget(m)).startswith(
        "bug check 0x4a IRQL_GT_ZERO_AT_SYSTEM_SERVICE: a system call returned to user mode "
        "above PASSIVE_LEVEL")
