"""Catchpoints: which executive events stop the debugger, and how each stop is told.

``catch KIND [FILTER]``: exception [VECTOR|NAME], page-fault, syscall [NUMBER|NAME],
ring [3->0|0->3], cr3, interrupt, dpc, driver-load, process-create, process-exit, bugcheck.
Ring switches are the moments the CPU changes privilege level (SDM Vol. 3A 5.8-5.9, 6.12):
3->0 on a system call, a ring-3 exception or an interrupt taken at ring 3; 0->3 when a
system call returns or the dispatcher resumes a thread at ring 3 with iretq.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from emu.debugger.walkview import error_code_text
from emu.hw.exceptions import Vector
from emu.nt.events import Event
from emu.nt.syscalls import Service

if TYPE_CHECKING:
    from emu.debugger.session import Session
    from emu.debugger.stops import Catchpoint

_KIND_EVENTS = {
    "exception": (Event.EXCEPTION,),
    "page-fault": (Event.EXCEPTION,),   # at the fault, before MmAccessFault: both rings
    "syscall": (Event.SYSCALL, Event.SYSCALL_RETURN),
    "ring": (Event.SYSCALL, Event.SYSCALL_RETURN, Event.EXCEPTION, Event.INTERRUPT,
             Event.THREAD_DISPATCH),
    "cr3": (Event.CR3_LOAD,),
    "interrupt": (Event.INTERRUPT,),
    "dpc": (Event.DPC,),
    "driver-load": (Event.DRIVER_LOAD,),
    "process-create": (Event.PROCESS_CREATE,),
    "process-exit": (Event.PROCESS_EXIT,),
    "bugcheck": (Event.BUGCHECK,),
}


def stops_at_dispatch(cp: Catchpoint) -> bool:
    """Whether ``cp`` catches a THREAD_DISPATCH or a CR3_LOAD (a quantum end's)."""
    return bool({Event.THREAD_DISPATCH, Event.CR3_LOAD} & set(_KIND_EVENTS[cp.kind.value]))


def check_filter(kind: str, text: str | None) -> str | None:
    """Normalise a catchpoint's filter, or raise ValueError with a one-line reason."""
    if text is None:
        return None
    if kind == "exception":
        return str(int(_vector(text)))
    if kind == "syscall":
        return str(int(_service(text)))
    if kind == "ring":
        if text not in ("3->0", "0->3"):
            raise ValueError("a ring switch is 3->0 or 0->3")
        return text
    raise ValueError(f"catch {kind} takes no filter")


def _vector(text: str) -> Vector:
    name = text.upper().lstrip("#")
    if name in Vector.__members__:
        return Vector[name]
    try:
        return Vector(int(text, 0))
    except ValueError:
        names = ", ".join(f"#{v.name}" for v in Vector)
        raise ValueError(f"no exception {text!r} (one of {names}, or a vector number)") \
            from None


def _service(text: str) -> Service:
    for s in Service:
        if s.name.lower() == text.lower():
            return s
    try:
        return Service(int(text, 0))
    except ValueError:
        raise ValueError(f"no system service {text!r} (see docs/abi.md)") from None


def describe(cp: Catchpoint, event: Event, d: dict[str, Any], s: Session) -> str | None:
    """What ``cp`` saw in ``event``, or None when the event is not one it catches."""
    kind = cp.kind.value
    if event not in _KIND_EVENTS[kind]:
        return None
    if kind == "ring":
        return _ring_switch(cp.filter, event, d, s)
    if kind == "exception":
        exc = d["exc"]
        if cp.filter is not None and int(cp.filter) != exc.vector:
            return None
        return f"exception #{exc.vector.name} at {s.target.symbolize(exc.rip)}, ring {exc.cpl}" \
            + (f", {exc.access} of {exc.address:#x}" if exc.address is not None else "")
    if kind == "page-fault":
        exc = d["exc"]
        if exc.vector != Vector.PF:
            return None
        # The stop is where the CPU delivers #PF: CR2 holds the address, the error code is
        # pushed, and no handler has run yet (SDM Vol. 3A 4.7, 6.15 "Interrupt 14").
        return (f"page fault: {exc.access} of {exc.address:#x} at "
                f"{s.target.symbolize(exc.rip)}, ring {exc.cpl}, error code "
                f"{error_code_text(exc.error_code)}")
    if kind == "syscall":
        number = d["number"]
        if cp.filter is not None and int(cp.filter) != number:
            return None
        name = Service(number).name if number in Service._value2member_map_ else \
            f"service {number:#x}"
        if event is Event.SYSCALL:
            args = ", ".join(f"{a:#x}" for a in d["args"])
            return f"system call {name}({args}) from process {d['thread'].process.pid}"
        result = d["result"]
        done = "blocked/ended" if result is None else f"returned {result:#x}"
        return f"system call {name} {done}"
    return _other(kind, d, s)


def _other(kind: str, d: dict[str, Any], s: Session) -> str:
    if kind == "cr3":
        return f"CR3 {d['old']:#x} -> {d['new']:#x}: {_space_name(d['new'], s)}"
    if kind == "interrupt":
        return f"interrupt vector {d['vector']:#x} in {_thread_name(d['thread'])}, ISR at " \
            f"{s.target.symbolize(d['isr'])}"
    if kind == "dpc":
        return f"DPC {s.target.symbolize(d['routine'])} in {_thread_name(d['thread'])}"
    if kind == "driver-load":
        image = d["driver"].image
        return f"driver {image.name} loaded at {image.base:#x}, DriverEntry next"
    if kind == "process-create":
        p = d["process"]
        return f'process {p.pid} "{p.name}" created'
    if kind == "process-exit":
        p = d["process"]
        return f'process {p.pid} "{p.name}" exits with status {p.exit_status & 0xFFFFFFFF:#x}'
    bc = d["bugcheck"]
    return f"bug check {bc.code:#x} {bc.name}"


def _ring_switch(filter: str | None, event: Event, d: dict[str, Any], s: Session) -> str | None:
    if event is Event.SYSCALL:
        switch, why = "3->0", "system call"
    elif event is Event.SYSCALL_RETURN:
        if d["result"] is None:
            return None                  # blocked: it returns to ring 3 later, elsewhere
        switch, why = "0->3", "return from a system call"
    elif event is Event.EXCEPTION:
        if d["exc"].cpl != 3:
            return None
        switch, why = "3->0", f"exception #{d['exc'].vector.name}"
    elif event is Event.INTERRUPT:
        if s.executive.cpu.cpl != 3:
            return None
        switch, why = "3->0", "device interrupt"
    else:
        switch, why = "0->3", f"the dispatcher resumes {_thread_name(d['thread'])} (iretq)"
    if filter is not None and filter != switch:
        return None
    return f"ring {switch}: {why}"


def _thread_name(thread) -> str:
    if thread is None:
        return "the idle system context"
    return f'thread {thread.tid} of process {thread.process.pid} "{thread.process.name}"'


def _space_name(cr3: int, s: Session) -> str:
    for p in s.executive.processes:
        if p.space.cr3 == cr3:
            return f'address space of process {p.pid} "{p.name}"'
    return "the system address space"
