"""The seed's scenario: a device interrupts an arbitrary thread; where may the DPC write?

1. an app asks to read into its buffer; 2. the driver starts the device and returns
STATUS_PENDING; 3. the interrupt arrives in whatever thread runs then; 4. a DPC that
writes the app's user address writes into the wrong address space.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from emu.nt import layout
from emu.nt.bugcheck import BugCheckCode

DRIVERS = Path(__file__).resolve().parents[2] / "guest" / "build" / "drivers"
PAGE = 0x7F7_93950000
DEVICE_DATA = "data from the slow device"


def scenario(machine_factory, apps, method: str, second=("victim",)):
    driver = DRIVERS / f"slow{method}.sys"
    if not driver.exists():
        pytest.skip("drivers not built")
    m = machine_factory()
    m.add_driver(driver)
    requester = m.spawn(apps / "slowread", [f"\\Device\\Slow{method.capitalize()}"])
    other = m.spawn(apps / second[0], list(second[1:])) if second else None
    r = m.run()
    return r, requester, other, bytes(m.executive.debug_output).decode()


def lines(proc) -> list[str]:
    return proc.output.decode().splitlines()


def dpc(debug: str) -> tuple[int, int, int]:
    irql, pid, target = re.search(r"DPC at IRQL (\d+) in process (\d+), writing at ([0-9A-F]+)",
                                  debug).groups()
    return int(irql), int(pid), int(target, 16)


@pytest.mark.parametrize("method", ["buffered", "direct"])
def test_buffered_and_direct_io_reach_the_right_process(machine_factory, apps, method):
    r, requester, victim, debug = scenario(machine_factory, apps, method)
    irql, pid, target = dpc(debug)
    assert irql == 2 and pid == victim.pid                  # the interrupt's arbitrary context
    assert target >= layout.KERNEL_SPACE_START              # a kernel address: valid anywhere
    assert lines(requester) == ["status 0x00000000", "read 28 bytes",
                                f"my page: {DEVICE_DATA}"]
    assert lines(victim) == ["my page: victim's own data, nobody else's"]
    assert r.bugcheck is None


def test_neither_io_writes_into_whichever_process_was_interrupted(machine_factory, apps):
    r, requester, victim, debug = scenario(machine_factory, apps, "neither")
    irql, pid, target = dpc(debug)
    assert pid == victim.pid and target == PAGE             # a user address, in the victim
    assert lines(requester)[-1] == "my page: requester's own page"    # never got its data
    assert lines(victim) == [f"my page: {DEVICE_DATA}"]               # silently corrupted
    assert r.bugcheck is None


def test_neither_io_where_the_address_is_unmapped_is_a_bug_check(machine_factory, apps):
    r, requester, other, debug = scenario(machine_factory, apps, "neither",
                                          ("counter", "x", "3"))
    bc = r.bugcheck
    assert bc.code == BugCheckCode.DRIVER_IRQL_NOT_LESS_OR_EQUAL
    assert bc.params[:3] == (PAGE, 2, 1) and bc.params[3] == bc.rip     # write at IRQL 2
    assert bc.driver == "slowneither.sys" and bc.location.startswith("slowneither.sys!DpcForIsr+")
    assert bc.process == f'{other.pid} "counter"' and bc.irql == 2     # the arbitrary context
    assert bc.backtrace[0] == bc.location
    assert requester in r.unfinished and other in r.unfinished


def test_an_idle_machine_takes_the_interrupt_in_the_system_context(machine_factory, apps):
    r, requester, _, debug = scenario(machine_factory, apps, "buffered", ())
    assert dpc(debug)[1] == 4          # the System process (PsGetCurrentProcessId: 4)
    assert lines(requester)[-1] == f"my page: {DEVICE_DATA}"


def test_the_interrupt_lands_on_the_same_instruction_every_run(machine_factory, apps):
    runs = []
    for _ in range(2):
        r, requester, victim, debug = scenario(machine_factory, apps, "neither")
        runs.append((debug, bytes(requester.output), bytes(victim.output),
                     requester.instructions, victim.instructions))
    assert runs[0] == runs[1]


@pytest.mark.parametrize("method", ["buffered", "direct"])
def test_asynchronous_io_completes_in_the_callers_address_space(machine_factory, apps,
                                                                method):
    driver = DRIVERS / f"slow{method}.sys"
    if not driver.exists():
        pytest.skip("drivers not built")
    m = machine_factory()
    m.add_driver(driver)
    requester = m.spawn(apps / "asyncread", [f"\\Device\\Slow{method.capitalize()}", "wait"])
    victim = m.spawn(apps / "victim")
    r = m.run()
    _, pid, _ = dpc(bytes(m.executive.debug_output).decode())
    assert pid == victim.pid                          # the DPC ran in the other process...
    assert lines(requester) == ["started 0x00000103", "working", "done 0x00000000, 28 bytes",
                                f"my page: {DEVICE_DATA}"]   # ...yet the caller got its data
    assert lines(victim) == ["my page: victim's own data, nobody else's"]
    assert r.bugcheck is None
