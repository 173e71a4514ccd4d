"""Accounting checks for the object manager: the handle tables against the objects.

What must always hold (each broken rule is one line of the result):

- Every handle in every process's table names an object the object manager still
  holds (no handle to a deleted object), and its value is a nonzero multiple of 4.
- A table holds at most MAX_HANDLES handles; a terminated process holds none (its
  table was destroyed at exit).
- A slot reserved for an object being made exists only while a thread of that
  process is inside the service making it (a device open waiting for its driver).
- Every object's handle count equals the number of handles, in all tables, that
  name it (ObpIncrementHandleCount/ObpDecrementHandleCount keep them equal).
- Nothing is alive that nothing keeps: an object with no handle is deleted, unless
  it is a process or thread that is still running (it keeps itself alive).
- Every running process and thread is an object the object manager holds.

``emu debug``'s ``check`` command and the tests call ``check_objects``.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from emu.nt.ob import HANDLE_INCREMENT, MAX_HANDLES, ObjectType, keeps_itself_alive
from emu.nt.process import ProcessState, ThreadState

if TYPE_CHECKING:
    from emu.nt.interfaces import ObjectManager


def _name(obj) -> str:
    """An object in words: its type and what identifies it."""
    kind = obj.object_type.value.lower()
    if obj.object_type is ObjectType.PROCESS:
        return f'process {obj.pid} "{obj.name}"'
    if obj.object_type is ObjectType.THREAD:
        return f"thread {obj.tid} of process {obj.process.pid}"
    if obj.object_type is ObjectType.DEVICE:
        return f"device file {obj.device.name}"
    path = getattr(obj, "path", None)
    return f"{kind} {path}" if path else f"{kind} object at {id(obj):#x}"


def check_objects(ex: ObjectManager) -> list[str]:
    """Every broken rule, in words; an empty list when handles and objects agree."""
    problems: list[str] = []
    live = {id(obj): obj for obj in ex.objects.live()}
    counted: Counter[int] = Counter()
    named: dict[int, object] = {}
    for proc in ex.processes:
        items = proc.handles.items()
        where = f'process {proc.pid} "{proc.name}"'
        if len(items) > MAX_HANDLES:
            problems.append(f"{where} holds {len(items)} handles, more than {MAX_HANDLES}")
        if proc.state is ProcessState.TERMINATED and items:
            problems.append(f"{where} has terminated, yet holds {len(items)} handle(s)")
        # A service making an object: about to call its driver (kernel_work), or in it now.
        busy = any(t.kernel_work is not None for t in proc.threads) or (
            ex.in_system_service and ex.current_thread is not None
            and ex.current_thread.process is proc)
        for value in proc.handles.reserved():
            if not busy:
                problems.append(f"{where} has handle {value:#x} reserved, yet no service of "
                                "its is making an object (a leaked slot)")
        for value, obj in items:
            if value <= 0 or value % HANDLE_INCREMENT:
                problems.append(f"{where} holds handle {value:#x}, not a nonzero multiple "
                                f"of {HANDLE_INCREMENT}")
            if id(obj) not in live:
                problems.append(f"handle {value:#x} of {where} names {_name(obj)}, which "
                                "the object manager has deleted")
            counted[id(obj)] += 1
            named[id(obj)] = obj
    for key, obj in sorted({**live, **named}.items(), key=lambda kv: _name(kv[1])):
        if obj.handle_count != counted[key]:
            problems.append(f"{_name(obj)} counts {obj.handle_count} handle(s), but "
                            f"{counted[key]} handle(s) name it")
        if key in live and counted[key] == 0 and not keeps_itself_alive(obj):
            problems.append(f"{_name(obj)} is alive, yet no handle names it and it is not "
                            "running (a leaked object)")
    for proc in ex.processes:
        if proc.state is not ProcessState.TERMINATED and id(proc) not in live:
            problems.append(f'{_name(proc)} is running, yet is no object of the object '
                            "manager")
        for thread in proc.threads:
            if thread.state is not ThreadState.TERMINATED and id(thread) not in live:
                problems.append(f"{_name(thread)} is running, yet is no object of the "
                                "object manager")
    return problems
