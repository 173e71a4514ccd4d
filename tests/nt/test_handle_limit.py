"""A full handle table refuses a create or open before anything is made (docs/abi.md,
"Handles"): at 4,096 handles, NtCreateEvent, NtOpenFile, NtDuplicateObject, NtCreateThread
and NtCreateProcess return STATUS_INSUFFICIENT_RESOURCES with no object left alive, no thread
run, no child started, and the out variable untouched."""

from __future__ import annotations

import pytest
from guestcalls import BUF, DATA, HELLO_STR, OUTV, THREAD_FN, Call, read_user, run

from emu.nt.ob import MAX_HANDLES, Event
from emu.nt.status import NTSTATUS
from emu.nt.syscalls import Service as S

FULL = NTSTATUS.STATUS_INSUFFICIENT_RESOURCES
SENTINEL = b"\xa5" * 8
ECHO_STR = DATA + 0x800


def fill_table(ex, proc) -> None:
    """4,096 handles, each to an unsignalled auto-reset event (the last one, 16384, is what
    the program's final wait blocks on)."""
    for _ in range(MAX_HANDLES):
        event = Event(manual_reset=False, state=False)
        proc.handles.insert(event)
        ex.objects.created(event)


CALLS = {
    "NtCreateEvent": Call(S.NtCreateEvent, (OUTV, 1, 1)),
    "NtOpenFile file": Call(S.NtOpenFile, (HELLO_STR, OUTV)),
    "NtOpenFile device": Call(S.NtOpenFile, (ECHO_STR, OUTV)),   # echo.sys: IRP_MJ_CREATE
    "NtDuplicateObject": Call(S.NtDuplicateObject, (4, OUTV)),
    "NtCreateThread": Call(S.NtCreateThread, (THREAD_FN, 0, OUTV)),
    "NtCreateProcess": Call(S.NtCreateProcess, (HELLO_STR, 0, OUTV)),
}
LAST = 4 * MAX_HANDLES


@pytest.mark.parametrize("name", list(CALLS))
def test_a_full_handle_table_leaves_nothing_behind(machine_factory, name):
    m, proc, results, dispatches = run(
        machine_factory, [CALLS[name], Call(S.NtWaitForSingleObject, (LAST, 0))],
        setup=False, plant={OUTV: SENTINEL, ECHO_STR: b"\\Device\\Echo\0"},
        prepare=fill_table, drivers=("echo.sys",))
    ex = m.executive
    assert results[:2] == (FULL, NTSTATUS.STATUS_TIMEOUT)     # the caller goes on
    assert read_user(ex, proc, OUTV, 8) == SENTINEL
    assert len(proc.handles) == MAX_HANDLES
    assert len(ex.objects.live()) == MAX_HANDLES + 2    # the events, the process, its thread
    assert proc.handles.lookup(4).handle_count == 1
    assert [t.tid for t in proc.threads] == [proc.threads[0].tid]   # no thread was made
    assert ex.processes == [proc] and proc.output == b""        # no child, nothing printed
    assert dispatches == 0                                      # no IRP_MJ_CREATE either


def test_a_closed_slot_is_used_again(machine_factory):
    m, proc, results, _ = run(
        machine_factory, [Call(S.NtCreateEvent, (OUTV, 1, 1)), Call(S.NtClose, (8,)),
                          Call(S.NtCreateThread, (THREAD_FN, 0, OUTV))],
        setup=False, prepare=fill_table)
    assert results[:3] == (FULL, 0, 0)
    assert read_user(m.executive, proc, OUTV, 8) == (8).to_bytes(8, "little")
    assert proc.output == b"T"                                  # the thread ran
    assert BUF                                                  # (its text lives in BUF)


def test_the_device_open_reaches_the_driver_below_the_limit(machine_factory):
    """The same open with one slot free: echo.sys sees its IRP_MJ_CREATE."""
    m, proc, results, dispatches = run(
        machine_factory, [Call(S.NtClose, (8,)), Call(S.NtOpenFile, (ECHO_STR, OUTV))],
        setup=False, plant={ECHO_STR: b"\\Device\\Echo\0"}, prepare=fill_table,
        drivers=("echo.sys",))
    assert results[:2] == (0, 0) and dispatches == 1
    assert proc.handles.lookup(8).object_type.value == "Device"
