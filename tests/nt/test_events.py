"""The executive's events (emu.nt.events): each one reported at its moment, with its facts."""

from __future__ import annotations

from pathlib import Path

from emu import Machine
from emu.nt.events import Event
from emu.nt.status import NTSTATUS
from emu.nt.syscalls import Service

GUEST = Path(__file__).resolve().parents[2] / "guest" / "build"


def record(m: Machine) -> list[tuple[Event, dict]]:
    seen: list[tuple[Event, dict]] = []
    m.executive.events.subscribe(lambda e, d: seen.append((e, dict(d))))
    return seen


def test_a_process_life_in_events():
    m = Machine("64M")
    seen = record(m)
    m.spawn(GUEST / "apps" / "badread", [])
    m.run()
    kinds = [e for e, _ in seen]
    assert kinds[0] is Event.PROCESS_CREATE and kinds[1] is Event.THREAD_DISPATCH
    assert Event.CR3_LOAD in kinds and Event.PROCESS_EXIT in kinds
    assert kinds[-1] is Event.CR3_LOAD        # back to the system space once it is gone
    exc = next(d for e, d in seen if e is Event.EXCEPTION)["exc"]
    assert exc.address == 0xFFFF_8000_0000_1000 and exc.cpl == 3
    clocks = [d["clock"] for _, d in seen]
    assert clocks == sorted(clocks)
    m.close()


def test_a_system_call_is_reported_on_entry_and_return():
    m = Machine("64M")
    seen = record(m)
    m.spawn(GUEST / "apps" / "hello", [])
    m.run()
    calls = [(e, d["number"]) for e, d in seen if e in (Event.SYSCALL, Event.SYSCALL_RETURN)]
    assert calls[:2] == [(Event.SYSCALL, Service.NtWriteConsole),
                         (Event.SYSCALL_RETURN, Service.NtWriteConsole)]
    m.close()


def test_a_device_read_reports_the_drivers_status_when_it_returns():
    m = Machine("64M")
    seen = record(m)
    m.add_driver(GUEST / "drivers" / "ticket.sys")
    m.spawn(GUEST / "apps" / "devread", ["\\Device\\Ticket"])
    m.run()
    (ret,) = [d for e, d in seen if e is Event.SYSCALL_RETURN and
              d["number"] == Service.NtReadFile]
    assert ret["result"] == NTSTATUS.STATUS_SUCCESS
    assert b"status 0x00000000" in m.processes[0].output
    m.close()


def test_interrupt_and_dpc_events_carry_the_interrupted_thread_at_their_irql():
    m = Machine("64M")
    irqls = []
    m.executive.events.subscribe(
        lambda e, d: e in (Event.INTERRUPT, Event.DPC) and
        irqls.append((e, d["thread"].process.name if d["thread"] else None,
                      m.executive.irql)))
    m.add_driver(GUEST / "drivers" / "slowbuffered.sys")
    m.spawn(GUEST / "apps" / "slowread", ["\\Device\\SlowBuffered"])
    m.spawn(GUEST / "apps" / "victim", [])
    m.run()
    assert (Event.INTERRUPT, "victim", 5) in irqls and (Event.DPC, "victim", 2) in irqls
    m.close()


def test_a_ring_3_fault_never_shows_kernel_bytes():
    m = Machine("64M")
    proc = m.spawn(GUEST / "apps" / "kexec", [])
    m.run()
    assert proc.exception.instruction == "(not readable at ring 3)"
    m.close()
