"""``history``: questions to the machine's past, in ``emu debug``.

    history events [KIND] [pid N] [--json]

lists the executive's events from boot to the current position (emu.eventlog's records:
position, pid, tid, ring, IRQL, RIP with its symbol, and a line saying what happened), of
one kind and one process if asked; ``--json`` prints the records as JSON Lines, exactly
as ``emu run --events FILE`` writes them.

The records are kept as the machine runs (``record_events``, called by the debugger's
recipe when it builds a machine, and by ``emu run --gdb`` for gdb's ``monitor history
events``). Going back in time builds the machine again, or resumes
a snapshot (a fork of this process, holding the records of its own past), and re-executes
to the target: the records are always those of the history that led here. Memory is
bounded: at most MAX_EVENTS records (each a compact JSON line, about 200 bytes), the oldest
dropped first, and the listing says how many were dropped.
"""

from __future__ import annotations

import json
import weakref
from collections import deque
from typing import TYPE_CHECKING, Any

from emu.eventlog import SCHEMA, EventLog, dumps

if TYPE_CHECKING:
    from emu.machine import Machine

MAX_EVENTS = 50_000        # records kept per machine (docs/limits.md): about 10 MiB
USAGE = "history events [KIND] [pid N] [--json]"


class EventHistory:
    """The event records of one machine, oldest first, at most ``limit`` of them."""

    def __init__(self, limit: int = MAX_EVENTS) -> None:
        self.lines: deque[str] = deque(maxlen=limit)
        self.seen = 0              # records made since boot (kept or dropped)

    def append(self, record: dict[str, Any]) -> None:
        """Keep one record (as its JSON line: a third of a dict's memory)."""
        self.lines.append(dumps(record))
        self.seen += 1

    @property
    def dropped(self) -> int:
        """Records made since boot that are no longer kept."""
        return self.seen - len(self.lines)


_HISTORIES: weakref.WeakKeyDictionary[Machine, EventHistory] = weakref.WeakKeyDictionary()


def record_events(machine: Machine) -> EventHistory:
    """Start keeping ``machine``'s events (before its drivers and apps are added, so that
    their loads are kept too)."""
    history = EventHistory()
    EventLog.attach(machine, history.append)
    _HISTORIES[machine] = history
    return history


def history_of(machine: Machine) -> EventHistory | None:
    """The events kept for ``machine``, or None if nobody keeps them."""
    return _HISTORIES.get(machine)


class HistoryError(ValueError):
    """A ``history`` command that cannot be answered: one line."""


def parse(arg: str, pids: set[int]) -> tuple[str | None, int | None, bool]:
    """``events [KIND] [pid N] [--json]`` -> (kind, pid, json); HistoryError otherwise."""
    words = arg.split()
    if not words:
        raise HistoryError(f"history of what? ({USAGE})")
    if words[0] != "events":
        raise HistoryError(f"no history of {words[0]!r} here ({USAGE})")
    kind, pid, as_json = None, None, False
    rest = words[1:]
    while rest:
        word = rest.pop(0)
        if word == "--json":
            as_json = True
        elif word == "pid":
            if not rest:
                raise HistoryError("pid needs a process id (see ps)")
            text = rest.pop(0)
            try:
                pid = int(text, 0)
            except ValueError:
                raise HistoryError(f"pid {text}: not a process id (a number; see ps)") \
                    from None
            if pid not in pids:
                known = ", ".join(str(p) for p in sorted(pids)) or "none"
                raise HistoryError(f"pid {pid}: no such process in this machine's history "
                                   f"(processes: {known})")
        elif kind is None and not word.startswith("-"):
            if word not in SCHEMA:
                raise HistoryError(f"no event kind {word!r} (one of: {', '.join(SCHEMA)})")
            kind = word
        else:
            raise HistoryError(f"unexpected {word!r} ({USAGE})")
    return kind, pid, as_json


def select(history: EventHistory, position: int, kind: str | None,
           pid: int | None) -> list[tuple[str, dict[str, Any]]]:
    """(line, record) of each kept event up to ``position`` of ``kind`` and ``pid``."""
    out = []
    for line in history.lines:
        record = json.loads(line)
        if record["position"] > position:
            break                  # not yet: the machine is earlier in its history
        if kind is not None and record["event"] != kind:
            continue
        if pid is not None and not concerns(record, pid):
            continue
        out.append((line, record))
    return out


def concerns(record: dict[str, Any], pid: int) -> bool:
    """Whether ``record`` is of process ``pid``: it happened in one of its threads, or it
    is about it (its creation, its exit, a CR3 load of its address space)."""
    about = record.get("process")
    return record["pid"] == pid or (about is not None and about["pid"] == pid) or \
        record.get("new_pid") == pid


def _hex_list(values: list[int]) -> str:
    return ", ".join(f"{v:#x}" for v in values)


def describe(r: dict[str, Any], symbolize) -> str:
    """What the event ``r`` says, in one line (``symbolize(address)`` names code)."""
    kind = r["event"]
    if kind == "driver-load":
        return f"driver {r['driver']} loaded at {r['base']:#x}, DriverEntry " \
            f"{symbolize(r['entry'])} next"
    if kind == "process-create":
        p = r["process"]
        args = " ".join(p["args"])
        return f'process {p["pid"]} "{p["name"]}" created' + (f" (args: {args})" if args else "")
    if kind == "process-exit":
        p, exc = r["process"], r["exception"]
        why = f" ({exc['name']} at {exc['rip']:#x})" if exc else ""
        return f'process {p["pid"]} "{p["name"]}" exits with status {r["exit_status"]:#x}{why}'
    if kind == "thread-dispatch":
        return f"thread {r['tid']} of process {r['pid']} gets the CPU"
    if kind == "syscall":
        name = r["service"] or f"service {r['number']:#x}"
        return f"system call {name}({_hex_list(r['args'])})"
    if kind == "syscall-return":
        name = r["service"] or f"service {r['number']:#x}"
        done = "blocked, yielded or ended" if r["result"] is None else \
            f"returned {r['result']:#x}"
        return f"system call {name} {done}"
    if kind == "exception":
        what = f", {r['access']} of {r['address']:#x}" if r["address"] is not None and \
            r["access"] else (f", address {r['address']:#x}" if r["address"] is not None else "")
        return f"exception #{r['name']} (vector {r['vector']}), error code " \
            f"{r['error_code']:#x}{what}"
    if kind == "page-fault":
        return f"page fault: {r['access']} of {r['address']:#x}, error code " \
            f"{r['error_code']:#x}: {r['resolution']}"
    if kind == "interrupt":
        return f"interrupt vector {r['vector']:#x}, ISR {r['isr_symbol']}"
    if kind == "dpc":
        return f"DPC {r['routine_symbol']}"
    if kind == "kernel-call-done":
        return f"{r['routine_symbol']} returned"
    if kind == "cr3-load":
        whose = f"process {r['new_pid']}" if r["new_pid"] is not None else "the system"
        return f"CR3 {r['old']:#x} -> {r['new']:#x} ({whose})"
    params = _hex_list(r["params"])
    who = f" in {r['driver']}" if r["driver"] else ""
    return f"bug check {r['code']:#x} {r['name']} ({params}){who}"


def row(r: dict[str, Any], symbolize) -> str:
    """One line of the listing: position, pid, tid, ring, IRQL, RIP <symbol>, event."""
    pid = "-" if r["pid"] is None else str(r["pid"])
    tid = "-" if r["tid"] is None else str(r["tid"])
    where = symbolize(r["rip"], r["pid"])
    rip = f"{r['rip']:#x}" + (f" <{where}>" if where != f"{r['rip']:#x}" else "")
    return f"{r['position']:>10}  pid {pid:>3} tid {tid:>3}  ring {r['ring']}  " \
        f"IRQL {r['irql']}  {rip}  {r['event']}: " \
        f"{describe(r, lambda a: symbolize(a, r['pid']))}"


class HistoryCommands:
    """The shell's ``history`` command (mixed into emu.debugger.shell.Shell)."""

    def do_history(self, arg: str) -> None:
        """history events [KIND] [pid N] [--json]: the executive's events from boot to now
        (position, pid, tid, ring, IRQL, RIP with symbol, what happened); KIND is one of
        driver-load, process-create, process-exit, thread-dispatch, syscall,
        syscall-return, exception, page-fault, interrupt, dpc, kernel-call-done, cr3-load,
        bugcheck; pid N keeps the events of process N (in its threads, or about it: its
        creation, its exit, a CR3 load of its address space); --json prints emu run
        --events's records. Going back shows only the events up to the position gone
        back to."""
        session = getattr(self, "session", None)
        history = history_of(session.machine) if session is not None else None
        if history is None:
            self.error("no event history here: it is kept for a machine started by "
                       "emu debug or emu run --gdb (a crash dump has none)")
            return
        pids = {p.pid for p in session.machine.processes}
        try:
            kind, pid, as_json = parse(arg, pids)
        except HistoryError as err:
            self.error(str(err))
            return
        found = select(history, session.position, kind, pid)
        if as_json:
            for line, _ in found:
                self.stdout.write(line + "\n")
            return
        target = session.target

        def symbolize(address: int, in_pid: int | None = None) -> str:
            try:
                return target.symbolize(address, in_pid)
            except Exception:    # noqa: BLE001 - a process gone, a TargetError: no name
                return f"{address:#x}"
        for _, record in found:
            self.message(row(record, symbolize))
        what = (f" of kind {kind}" if kind else "") + (f" in pid {pid}" if pid is not None else "")
        dropped = f"; the oldest {history.dropped} are no longer kept (at most " \
            f"{MAX_EVENTS:,})" if history.dropped else ""
        self.message(f"{len(found)} event{'' if len(found) == 1 else 's'}{what} from boot "
                     f"to position {session.position}{dropped}")

    def complete_history(self, text: str, line: str, begidx: int, endidx: int) -> list[str]:
        """Tab: ``events``, then the event kinds, ``pid`` and ``--json``."""
        words = line[:begidx].split()
        choices = ["events"] if len(words) <= 1 else [*SCHEMA, "pid", "--json"]
        return [c for c in choices if c.startswith(text)]
