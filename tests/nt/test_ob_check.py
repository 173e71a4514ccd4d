"""The object manager's books (emu.nt.ob_check) and the debugger's ``check`` that prints
them: silent on a healthy machine, one line per broken rule on a corrupted one."""

from __future__ import annotations

import pytest
from guestcalls import DATA, EVENT, FILE, OUTV, THREAD_FN, Call, run
from shellharness import Harness

from emu.debugger.target import LiveTarget
from emu.nt.ob import Event
from emu.nt.ob_check import check_objects
from emu.nt.syscalls import Service as S


@pytest.fixture
def paused(machine_factory):
    """A process blocked with six handles open (console, file, event, two devices, event)
    and a second thread of its own."""
    m, proc, results, _ = run(machine_factory, [Call(S.NtCreateThread, (THREAD_FN, 0, OUTV))])
    assert results[7] == 0
    return m, proc, Harness(LiveTarget(m))


def test_a_healthy_machine_passes(paused):
    m, _, sh = paused
    assert check_objects(m.executive) == []
    out = sh.run("check")
    assert out.startswith("the books balance") and "every handle names a live object" in out


def test_a_wrong_handle_count_is_reported(paused):
    m, proc, sh = paused
    proc.handles.lookup(EVENT).handle_count += 1
    assert sh.run("check").splitlines() == [
        "1 broken rule(s):", "  event object at "
        f"{id(proc.handles.lookup(EVENT)):#x} counts 2 handle(s), but 1 handle(s) name it"]


def test_a_handle_to_a_deleted_object_is_reported(paused):
    m, proc, sh = paused
    m.executive.objects._live.pop(id(proc.handles.lookup(FILE)))
    out = sh.run("check").splitlines()
    assert out == ["1 broken rule(s):", f'  handle 0x8 of process {proc.pid} "svc" names file '
                   "hello, which the object manager has deleted"]


def test_a_leaked_object_is_reported(paused):
    m, _, sh = paused
    leak = Event(manual_reset=True, state=False)
    m.executive.objects.created(leak)
    assert sh.run("check").splitlines() == [
        "1 broken rule(s):", f"  event object at {id(leak):#x} is alive, yet no handle names "
        "it and it is not running (a leaked object)"]


def test_a_running_thread_the_object_manager_lost_is_reported(paused):
    m, proc, sh = paused
    thread = proc.threads[0]
    m.executive.objects._live.pop(id(thread))
    assert sh.run("check").splitlines() == [
        "1 broken rule(s):", f"  thread {thread.tid} of process {proc.pid} is running, yet is "
        "no object of the object manager"]


def test_a_leaked_reserved_slot_is_reported(paused):
    m, proc, sh = paused
    value = proc.handles.reserve()
    assert sh.run("check").splitlines() == [
        "1 broken rule(s):", f'  process {proc.pid} "svc" has handle {value:#x} reserved, yet '
        "no service of its is making an object (a leaked slot)"]


def test_a_slot_reserved_while_the_driver_opens_is_no_leak(machine_factory):
    """Stopped inside echo.sys's IRP_MJ_CREATE (where a debugger may stop), the slot the
    open reserved is in use, not leaked."""
    seen = []

    def factory(**kwargs):
        m = machine_factory(**kwargs)
        real = m.executive.io._call

        def call(*args):
            proc = m.executive.processes[0]
            seen.append((proc.handles.reserved(), check_objects(m.executive)))
            return real(*args)
        m.executive.io._call = call
        return m
    echo = DATA + 0x800
    m, proc, results, _ = run(factory, [Call(S.NtOpenFile, (echo, OUTV))], setup=False,
                              plant={echo: b"\\Device\\Echo\0"}, drivers=("echo.sys",))
    assert results[0] == 0 and seen == [([4], [])]
    assert proc.handles.reserved() == [] and check_objects(m.executive) == []
