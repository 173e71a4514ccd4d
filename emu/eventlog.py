"""The event log: the executive's events (emu.nt.events) as JSON-ready records, for tools.

``emu run --events FILE`` writes one record a line (JSON Lines); ``emu debug``'s ``history
events`` lists the same records. Every record has the fields of ``COMMON`` (where in the
run, which thread, the CPU's ring, IRQL and RIP) and those of its event in ``SCHEMA``; the
objects some fields hold are described in ``OBJECTS``. docs/report.md, "The event log",
is this schema in words (a test checks that the two agree).

Positions are the debugger's (emu.debugger.session): instructions completed since boot plus
exceptions the CPU raised, a kernel export's call counting as one (its fetch fault is the
step the executive runs the routine in). The log needs every instruction counted, so a
machine with a log counts from its first instruction, as under ``emu debug``
(``EventLog.attach`` turns it on): the guest runs the same instructions in the same
schedule; only the clock a guest may read moves where a plain run would not count (a stretch
at full speed: docs/report.md, "The event log").

The recorder only reads the machine: it is an observer of the executive's EventBus, as the
debugger's catchpoints are.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from emu.hw.exceptions import Vector
from emu.nt import drivers
from emu.nt.events import Event
from emu.nt.syscalls import Service

if TYPE_CHECKING:
    from emu.machine import Machine
    from emu.nt.kernel import Executive

# A field's type, as the schema and docs/report.md spell it.
INT, STRING = "integer", "string"
INT_OR_NULL, STRING_OR_NULL = "integer or null", "string or null"
INTS = "array of integers"
PROCESS = "process"                      # an object: OBJECTS["process"]
EXCEPTION_OR_NULL = "exception or null"  # an object or null: OBJECTS["exception"]

# Fields of every record, in the order they are written.
COMMON: dict[str, str] = {
    "position": INT,     # the debugger's position: instructions + exceptions since boot
    "clock": INT,        # the machine's time in instructions (idle time skipped included)
    "event": STRING,     # the Event's value, e.g. "syscall"
    "pid": INT_OR_NULL,  # the thread the event happened in: its process ...
    "tid": INT_OR_NULL,  # ... and its id (null: no thread, as in DriverEntry or idle)
    "ring": INT,         # the CPU's CPL (0 or 3)
    "irql": INT,         # CR8, the IRQL
    "rip": INT,          # the CPU's RIP
}

# Each event's own fields, after the common ones, in the order they are written.
SCHEMA: dict[str, dict[str, str]] = {
    Event.DRIVER_LOAD.value: {"driver": STRING, "base": INT, "size": INT, "entry": INT},
    Event.PROCESS_CREATE.value: {"process": PROCESS},
    Event.PROCESS_EXIT.value: {"process": PROCESS, "exit_status": INT,
                               "exception": EXCEPTION_OR_NULL},
    Event.THREAD_DISPATCH.value: {},
    Event.SYSCALL.value: {"number": INT, "service": STRING_OR_NULL, "args": INTS},
    Event.SYSCALL_RETURN.value: {"number": INT, "service": STRING_OR_NULL,
                                 "result": INT_OR_NULL},
    Event.EXCEPTION.value: {"vector": INT, "name": STRING, "error_code": INT,
                            "address": INT_OR_NULL, "access": STRING_OR_NULL},
    Event.PAGE_FAULT.value: {"address": INT, "access": STRING, "error_code": INT,
                             "resolution": STRING},
    Event.INTERRUPT.value: {"vector": INT, "isr": INT, "isr_symbol": STRING},
    Event.DPC.value: {"routine": INT, "routine_symbol": STRING},
    Event.KERNEL_CALL_DONE.value: {"routine": INT, "routine_symbol": STRING},
    Event.CR3_LOAD.value: {"old": INT, "new": INT, "new_pid": INT_OR_NULL},
    Event.BUGCHECK.value: {"code": INT, "name": STRING, "params": INTS,
                           "driver": STRING_OR_NULL},
}

OBJECTS: dict[str, dict[str, str]] = {
    PROCESS: {"pid": INT, "name": STRING, "parent": INT_OR_NULL, "args": "array of strings"},
    "exception": {"code": INT, "name": STRING, "address": INT_OR_NULL,
                  "access": STRING_OR_NULL, "rip": INT},
}

# `emu scenario run --events FILE`: each record also says which scenario and act it is from.
SCENARIO_FIELDS: dict[str, str] = {"scenario": STRING, "act": INT}

# FaultResolution's values, the only ones a page-fault record's resolution takes.
RESOLUTIONS = ("resolved", "not handled", "guard page", "stack overflow", "in-page error")


class EventLog:
    """An observer that turns each event into a record and hands it to ``sink``."""

    def __init__(self, executive: Executive, sink: Callable[[dict[str, Any]], None]) -> None:
        self.executive = executive
        self.sink = sink
        self._exceptions = 0      # EXCEPTION events seen: each is a step of the position
        self._pf_events = 0       # ... of which #PF: the CPU's other #PFs are export calls
        self._gates: dict[int, int] = {}   # tid -> its system call instruction's address

    @classmethod
    def attach(cls, machine: Machine, sink: Callable[[dict[str, Any]], None]) -> EventLog:
        """Record ``machine``'s events from now on (attach before drivers and apps are
        added, so that their loads are in the log); every instruction is counted."""
        log = cls(machine.executive, sink)
        log.subscribe_to(machine)
        return log

    def subscribe_to(self, machine: Machine) -> None:
        """Count ``machine``'s every instruction from now on and take its events."""
        machine.count_instructions = True
        ex = machine.executive
        if ex.debugger is None:
            # Counted from the first instruction (a DriverEntry's too), as the debugger
            # counts (emu.debugger.session): the same positions, the same clock.
            ex.set_budget(ex.scheduler.quantum)
        ex.events.subscribe(self, logged=True)   # a logged dispatch says what record reads

    def detach(self) -> None:
        """Stop recording."""
        self.executive.events.unsubscribe(self)

    def position(self, instructions: int | None = None) -> int:
        """The debugger's position now (or when ``instructions`` were completed, with no
        exception since): instructions completed plus exceptions raised, a kernel export's
        call being one (its #PF on the fetch of the trap address is the only #PF the
        executive does not report as an EXCEPTION event)."""
        cpu = self.executive.cpu
        done = cpu.instructions if instructions is None else instructions
        return done + self._exceptions + cpu.page_faults - self._pf_events

    def __call__(self, event: Event, details: dict[str, Any]) -> None:
        if event is Event.EXCEPTION:
            self._exceptions += 1
            self._pf_events += details["exc"].vector == Vector.PF
        self.sink(self.record(event, details))

    def record(self, event: Event, d: dict[str, Any]) -> dict[str, Any]:
        """The JSON-ready record of ``event`` with details ``d`` (SCHEMA's fields)."""
        ex = self.executive
        cpu = ex.cpu
        thread = d["thread"] if "thread" in d else ex.current_thread
        logged = d.get("logged")
        if logged is None:
            # One call into Unicorn; CR8 is the IRQL (Executive.irql: x64 Windows' TPR).
            cs, rip, irql = cpu.regs(_CS_RIP_CR8)
            position = self.position()
        else:
            # A dispatch made in C, told after it (emu.nt.events): what the CPU held then.
            # The dispatch is told before the next thread's context is loaded (its CR8
            # still the leaving thread's), its CR3 load after (ke_dispatcher._switch_to).
            cs, rip = logged.cs, logged.rip
            irql = logged.cr8_leaving if event is Event.THREAD_DISPATCH else logged.cr8
            position = self.position(logged.count)
        out: dict[str, Any] = {
            "position": position, "clock": d["clock"], "event": event.value,
            "pid": thread.process.pid if thread is not None else None,
            "tid": thread.tid if thread is not None else None,
            "ring": cs & 3, "irql": irql, "rip": rip,     # CPL: CS's RPL (SDM 5.5)
        }
        if event is Event.THREAD_DISPATCH:
            out["ring"], out["rip"] = _resumes_at(cpu, thread) if logged is None else \
                (cs & 3, rip)
        elif event is Event.SYSCALL:
            # The `syscall` hook sees RIP on the instruction, the `int 0x2e` gate (a 32-bit
            # process, docs/abi.md) past it: the record names the instruction either way.
            gate = rip - (2 if thread.process.bits == 32 else 0)
            self._gates[thread.tid] = out["rip"] = gate
        elif event is Event.SYSCALL_RETURN and thread.tid in self._gates:
            # Where the thread goes on: after the 2-byte `syscall` (0F 05) or `int 0x2e`
            # (CD 2E), as the SYSRET or IRETQ back to ring 3 leaves it (SDM Vol. 2B).
            out["rip"] = self._gates.pop(thread.tid) + 2
        out.update(_DETAILS[event](ex, d))
        return out


def _resumes_at(cpu, thread) -> tuple[int, int]:
    """(ring, RIP) a dispatched thread resumes at: its saved context (KiSwapContext loads
    it next), or for a new thread its start address at ring 3 (KiStartUserThread)."""
    if thread.context is None:
        return 3, thread.start_rip
    cs, rip = cpu.context_regs(thread.context, _CS_RIP)     # one raw call: a record per
    #                                                         quantum end under emu debug
    return cs & 3, rip


_CS_RIP = ("cs", "rip")
_CS_RIP_CR8 = ("cs", "rip", "cr8")
_SERVICES = {int(s): s.name for s in Service}


def _service(number: int) -> str | None:
    return _SERVICES.get(number)


def _process(p) -> dict[str, Any]:
    return {"pid": p.pid, "name": p.name, "parent": p.parent_pid, "args": list(p.args)}


def _exception(info) -> dict[str, Any] | None:
    if info is None:
        return None
    return {"code": info.code, "name": info.name, "address": info.address,
            "access": info.access, "rip": info.rip}


def _driver_load(_ex: Executive, d: dict[str, Any]) -> dict[str, Any]:
    image = d["driver"].image
    return {"driver": image.name, "base": image.base, "size": image.end - image.base,
            "entry": image.entry}


def _process_exit(_ex: Executive, d: dict[str, Any]) -> dict[str, Any]:
    p = d["process"]
    return {"process": _process(p), "exit_status": p.exit_status & 0xFFFF_FFFF,
            "exception": _exception(p.exception)}


def _exception_event(_ex: Executive, d: dict[str, Any]) -> dict[str, Any]:
    exc = d["exc"]
    name = exc.vector.name if isinstance(exc.vector, Vector) else f"{int(exc.vector):#x}"
    return {"vector": int(exc.vector), "name": name, "error_code": exc.error_code,
            "address": exc.address, "access": exc.access}


def _page_fault(_ex: Executive, d: dict[str, Any]) -> dict[str, Any]:
    exc = d["exc"]
    return {"address": exc.address, "access": exc.access, "error_code": exc.error_code,
            "resolution": d["resolution"].value}


def _cr3(ex: Executive, d: dict[str, Any]) -> dict[str, Any]:
    # The process whose tables CR3 now names (a process's own space; null for the system's).
    owner = next((p.pid for p in ex.processes if p.space.cr3 == d["new"]), None)
    return {"old": d["old"], "new": d["new"], "new_pid": owner}


def _bugcheck(_ex: Executive, d: dict[str, Any]) -> dict[str, Any]:
    bc = d["bugcheck"]
    return {"code": bc.code, "name": bc.name, "params": list(bc.params),
            "driver": bc.driver or None}


_DETAILS: dict[Event, Callable[[Executive, dict[str, Any]], dict[str, Any]]] = {
    Event.DRIVER_LOAD: _driver_load,
    Event.PROCESS_CREATE: lambda _ex, d: {"process": _process(d["process"])},
    Event.PROCESS_EXIT: _process_exit,
    Event.THREAD_DISPATCH: lambda _ex, _d: {},
    Event.SYSCALL: lambda _ex, d: {"number": d["number"], "service": _service(d["number"]),
                                   "args": list(d["args"])},
    Event.SYSCALL_RETURN: lambda _ex, d: {"number": d["number"],
                                          "service": _service(d["number"]),
                                          "result": d["result"]},
    Event.EXCEPTION: _exception_event,
    Event.PAGE_FAULT: _page_fault,
    Event.INTERRUPT: lambda ex, d: {"vector": d["vector"], "isr": d["isr"],
                                    "isr_symbol": drivers.symbolize(ex, d["isr"])},
    Event.DPC: lambda ex, d: {"routine": d["routine"],
                              "routine_symbol": drivers.symbolize(ex, d["routine"])},
    Event.KERNEL_CALL_DONE: lambda ex, d: {"routine": d["routine"],
                                           "routine_symbol": drivers.symbolize(ex, d["routine"])},
    Event.CR3_LOAD: _cr3,
    Event.BUGCHECK: _bugcheck,
}


_ENCODER = json.JSONEncoder(separators=(",", ":"))


def dumps(record: dict[str, Any]) -> str:
    """One JSON Lines line (no newline): compact, keys in the schema's order."""
    return _ENCODER.encode(record)


class JsonLinesWriter:
    """A sink that writes each record as a line of ``stream``; the first write error is
    kept (``error``) and later records are dropped, so the run goes on (a full disk)."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.error: OSError | None = None

    def __call__(self, record: dict[str, Any]) -> None:
        if self.error is not None:
            return
        try:
            self.stream.write(dumps(record) + "\n")
        except OSError as err:
            self.error = err


# -- checking a record against the schema (tests, and tools that read the log) -------------

def _type_ok(kind: str, value: Any) -> bool:
    if kind.endswith(" or null"):
        return value is None or _type_ok(kind[:-len(" or null")], value)
    if kind == INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == STRING:
        return isinstance(value, str)
    if kind == INTS:
        return isinstance(value, list) and all(_type_ok(INT, v) for v in value)
    if kind == "array of strings":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind in OBJECTS:
        return isinstance(value, dict) and not _fields_problems(OBJECTS[kind], value, kind)
    raise AssertionError(f"unknown type {kind!r}")


def _fields_problems(fields: dict[str, str], value: dict[str, Any], where: str) -> list[str]:
    problems = []
    if list(value) != list(fields):
        problems.append(f"{where}: fields {list(value)}, the schema has {list(fields)}")
    for name, kind in fields.items():
        if name in value and not _type_ok(kind, value[name]):
            problems.append(f"{where}.{name}: {value[name]!r} is not {kind}")
    return problems


def problems(record: Any, *, scenario: bool = False) -> list[str]:
    """What is wrong with one record of the log, by the schema (empty: nothing);
    ``scenario``: a record of `emu scenario run --events`, with SCENARIO_FIELDS last."""
    if not isinstance(record, dict):
        return ["a record is not a JSON object"]
    event = record.get("event")
    if event not in SCHEMA:
        return [f"unknown event {event!r}"]
    fields = {**COMMON, **SCHEMA[event], **(SCENARIO_FIELDS if scenario else {})}
    out = _fields_problems(fields, record, event)
    if not out and record["ring"] not in (0, 3):
        out.append(f"{event}: ring {record['ring']} is not 0 or 3")
    if not out and not 0 <= record["irql"] <= 15:
        out.append(f"{event}: IRQL {record['irql']} is not 0-15")
    if not out and event == Event.PAGE_FAULT.value and record["resolution"] not in RESOLUTIONS:
        out.append(f"page-fault: resolution {record['resolution']!r} is not one of "
                   f"{RESOLUTIONS}")
    return out
