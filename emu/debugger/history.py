"""``history``: questions to the machine's past, in ``emu debug``.

    history events [KIND] [pid N] [--json]
    history write|read|access ADDR [LEN] [pid N | phys] [--json]
    history calls SYMBOL [pid N] [args N] [--json]
    goto POSITION | goto #ROW | goto #ROW.ret

lists the executive's events from boot to the current position (emu.eventlog's records:
position, pid, tid, ring, IRQL, RIP with its symbol, and a line saying what happened), of
one kind and one process if asked; ``--json`` prints the records as JSON Lines, exactly
as ``emu run --events FILE`` writes them.

The records are kept as the machine runs (``record_events``, called by the debugger's
recipe when it builds a machine, and by ``emu run --gdb`` for gdb's ``monitor history
events``). Going back in time builds the machine again, or resumes
a snapshot (a fork of this process, holding the records of its own past), and re-executes
to the target: the records are always those of the history that led here. Memory is
bounded: at most MAX_EVENTS records (each a tuple of its values, about 230 bytes), the oldest
dropped first, and the listing says how many were dropped. A record is kept as its values
and made JSON only when listed (EventHistory).
"""

from __future__ import annotations

import json
import weakref
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from emu.debugger import calls, query
from emu.debugger.expr import ExprError, evaluate
from emu.debugger.stops import SessionError, Stop, StopReason
from emu.eventlog import SCHEMA, EventLog, dumps

if TYPE_CHECKING:
    from emu.machine import Machine

MAX_EVENTS = 50_000        # records kept per machine (docs/limits.md): about 11 MiB
EVENTS_USAGE = "history events [KIND] [pid N] [--json]"
USAGE = f"{EVENTS_USAGE} | history write|read|access ADDR [LEN] [pid N | phys] [--json] | " \
    f"{calls.USAGE}"


class EventHistory:
    """The event records of one machine, oldest first, at most ``limit`` of them.

    A record is kept as its values (a tuple, its keys shared by every record of the same
    fields) and made JSON only when someone lists it: a `continue` that crosses 1,000
    quantum ends makes 1,000 `thread-dispatch` records, and encoding each as it is made
    cost the run more than keeping it. The objects a record holds are its own (the event
    log builds each record afresh), so what is listed is what the event made."""

    def __init__(self, limit: int = MAX_EVENTS) -> None:
        self._kept: deque[tuple[tuple[str, ...], tuple[Any, ...]]] = deque(maxlen=limit)
        self._keys: dict[tuple[str, ...], tuple[str, ...]] = {}   # one key tuple per shape
        self.seen = 0              # records made since boot (kept or dropped)

    def append(self, record: dict[str, Any]) -> None:
        """Keep one record (its values; JSON only when listed)."""
        keys = tuple(record)
        self._kept.append((self._keys.setdefault(keys, keys), tuple(record.values())))
        self.seen += 1

    def __len__(self) -> int:
        return len(self._kept)

    @property
    def lines(self) -> list[str]:
        """Each kept record as its JSON line (``emu run --events``'s), oldest first."""
        return [dumps(dict(zip(keys, values, strict=True))) for keys, values in self._kept]

    def records(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """(line, record) of each kept record, oldest first: the record read back from its
        JSON line, as a reader of ``emu run --events`` gets it."""
        for line in self.lines:
            yield line, json.loads(line)

    @property
    def dropped(self) -> int:
        """Records made since boot that are no longer kept."""
        return self.seen - len(self._kept)


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
    if words[0] != "events":  # (write, read and access: emu.debugger.query)
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
            raise HistoryError(f"unexpected {word!r} ({EVENTS_USAGE})")
    return kind, pid, as_json


def select(history: EventHistory, position: int, kind: str | None,
           pid: int | None) -> list[tuple[str, dict[str, Any]]]:
    """(line, record) of each kept event up to ``position`` of ``kind`` and ``pid``."""
    out = []
    for line, record in history.records():
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
        back to. history write|read|access ADDR [LEN] [pid N | phys] [--json]: every access
        to a range from boot to now. history calls SYMBOL [pid N] [args N] [--json]: every
        call of a function (a driver's, an app's, or a kernel export such as
        IofCompleteRequest) from boot to now, with its caller, arguments and return
        (goto #ROW goes to the call, goto #ROW.ret to its return)."""
        session = getattr(self, "session", None)
        history = history_of(session.machine) if session is not None else None
        if history is None:
            self.error("no event history here: it is kept for a machine started by "
                       "emu debug or emu run --gdb (a crash dump has none)")
            return
        pids = {p.pid for p in session.machine.processes}
        words = arg.split()
        if words and words[0] in query.KINDS:
            self._history_access(session, words, pids)
            return
        if words and words[0] == "calls":
            self._history_calls(session, words, pids)
            return
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

    def history_state(self) -> dict[str, Any]:
        """What a resumed snapshot needs: the last answer's rows, and the index."""
        return {"rows": getattr(self, "query_rows", None),
                "index": self.__dict__.get("query_index"),
                "calls_index": self.__dict__.get("calls_index"),
                "goto": self.__dict__.get("goto_to")}

    def load_history_state(self, state: dict[str, Any]) -> None:
        """Take over the rows and the index of the shell that handed the session on."""
        self.query_rows = state["rows"]
        self.goto_to = state["goto"]
        if state["index"] is not None:
            self.query_index = state["index"]
        if state.get("calls_index") is not None:
            self.calls_index = state["calls_index"]

    def _history_access(self, session, words: list[str], pids: set[int]) -> None:
        """``history write|read|access ...``: see emu.debugger.query."""
        if session.factory is None:
            self.error("history write/read/access re-executes the machine: it needs its "
                       "recipe (use emu debug)")
            return
        current = session.executive.current

        def number(text: str) -> int:
            try:
                return evaluate(text, session.target, getattr(self, "view_pid", None))
            except ExprError as err:
                raise ValueError(str(err)) from None
        try:
            q, as_json = query.parse(words, pids, current.pid if current else None, number,
                                      session.machine.mem.size)
        except query.QueryError as err:
            self.error(str(err))
            return
        index = self.__dict__.setdefault("query_index", query.QueryIndex())
        position = session.position
        found, truncated, cached = index.answer(q, position, session.factory)
        self.query_rows = [a.position for a in found]
        symbolize = _symbolizer(session.target)
        if as_json:
            for a in found:
                self.stdout.write(json.dumps(a.json(symbolize(a.rip, a.pid)),
                                             separators=(",", ":")) + "\n")
            return
        for n, a in enumerate(found, 1):
            self.message(access_row(n, a, symbolize))
        self.message(access_summary(q, len(found), position, truncated, cached,
                                    index.started_at))

    def _history_calls(self, session, words: list[str], pids: set[int]) -> None:
        """``history calls SYMBOL ...``: see emu.debugger.calls."""
        if session.factory is None:
            self.error("history calls re-executes the machine: it needs its recipe (use "
                       "emu debug)")
            return
        try:
            fn, pid, nargs, as_json = calls.parse(words, pids, session.target.images())
        except calls.CallsError as err:
            self.error(str(err))
            return
        index = self.__dict__.setdefault("calls_index", calls.CallIndex())
        n = fn.default_args() if nargs is None else nargs
        position = session.position
        found, truncated, cached = index.answer(fn, n, position, session.factory,
                                                ended=session.ended)
        found = [c for c in found if pid is None or c.pid == pid]
        self.query_rows = [(c.position, c.return_position) for c in found]
        symbolize = calls.memo(_symbolizer(session.target))
        if as_json:
            for c in found:
                self.stdout.write(json.dumps(c.json(fn, n, symbolize),
                                             separators=(",", ":")) + "\n")
            return
        for row_number, c in enumerate(found, 1):
            self.message(calls.row(row_number, c, fn, n, symbolize))
        self.message(calls.summary(fn, len(found), pid, position, truncated, cached))

    def do_goto(self, arg: str) -> bool | None:
        """goto POSITION | goto #ROW | goto #ROW.ret: the machine at exactly that position
        (steps since boot, as ``position`` counts them), or at row ROW of the last history
        write, read or access answer (before the accessing instruction runs), or of the last
        history calls answer (the call: the function's first instruction about to run;
        #ROW.ret: its return, RIP at the return address, RAX the value); going back
        re-executes."""
        session = getattr(self, "session", None)
        if session is None:
            self.error("no machine is running (a crash dump cannot run)")
            return None
        try:
            target = goto_target(arg, getattr(self, "query_rows", None),
                                 lambda text: evaluate(text, session.target,
                                                       getattr(self, "view_pid", None)))
        except (SessionError, ExprError) as err:
            self.error(str(err))
            return None
        now = session.position
        if target == now:
            self.message(f"already at position {now}")
            return None
        if target > now and session.ended:
            self.error(f"position {target} is after the end of this machine's history "
                       f"(it ended at {now})")
            return None
        self.goto_to = target
        try:
            self._goto_move(session, target)
        except SessionError as err:
            self.goto_to = None
            self.error(str(err))
            return None
        self.resumed = True
        self.view_pid = None
        return True

    def _goto_move(self, session, target: int) -> None:
        """One move to ``target``: ``stepi`` or ``reverse-stepi`` by the gap, which lands
        exactly there (a step counts positions: instructions, exceptions, export calls)."""
        now = session.position
        if now < target:
            session.step(target - now)
        else:
            session.reverse_step(now - target)

    def goto_again(self, stop: Stop) -> bool:
        """At a stop during ``goto``: True when goto moved on (nothing to show), False when
        this stop is the one to show: the position asked for, a breakpoint, watchpoint or
        catchpoint met going forward, or the end of the machine."""
        target = self.__dict__.get("goto_to")
        if target is None:
            return False
        session = self.session
        if session.position == target or session.ended or \
                stop.reason not in (StopReason.STEP, StopReason.HISTORY_START):
            self.goto_to = None
            return False
        self._goto_move(session, target)
        return True

    def complete_history(self, text: str, line: str, begidx: int, endidx: int) -> list[str]:
        """Tab: ``events``, then the event kinds, ``pid`` and ``--json``; for ``calls``, a
        function (a symbol, or ``nt!`` and an export), then ``pid``, ``args``, ``--json``."""
        words = line[:begidx].split()
        if len(words) <= 1:
            choices = ["events", *query.KINDS, "calls"]
        elif words[1] in query.KINDS:
            choices = ["pid", "phys", "--json"]
        elif words[1] == "calls":
            choices = ["pid", "args", "--json"]
            target = getattr(self, "target", None)
            if len(words) == 2 and target is not None:     # the function: a symbol
                choices = [*target.symbol_names(), *(f"nt!{n}" for n in sorted(
                    calls.exports.EXPORTS))]
        else:
            choices = [*SCHEMA, "pid", "--json"]
        return [c for c in choices if c.startswith(text)]


def goto_target(arg: str, rows: list[int] | list[tuple[int, int | None]] | None,
                evaluate_position) -> int:
    """The position ``goto ARG`` names: ``#ROW`` (a row of the last query's answer, from
    1), ``#ROW.ret`` (the return of a history calls row) or an expression; SessionError
    otherwise. A calls answer's rows are (call, return or None) pairs."""
    text = arg.strip()
    if not text:
        raise SessionError("goto where? (goto POSITION, or goto #ROW of the last history "
                           "write/read/access or calls answer, #ROW.ret for a call's return)")
    if text.startswith("#"):
        if rows is None:
            raise SessionError(f"goto {text}: no history write/read/access answer to take "
                               "a row from yet, nor a history calls one")
        body, ret = text[1:], False
        if body.endswith(".ret"):
            body, ret = body[:-4], True
        try:
            n = int(body, 10)
        except ValueError:
            raise SessionError(f"goto {text}: a row is a number, e.g. goto #1 (or goto "
                               "#1.ret for the return of a history calls row)") from None
        if not 1 <= n <= len(rows):
            raise SessionError(f"goto {text}: the last answer has rows 1 to {len(rows)}"
                               if rows else f"goto {text}: the last answer had no rows")
        entry = rows[n - 1]
        if not isinstance(entry, tuple):
            if ret:
                raise SessionError(f"goto {text}: row {n} is an access, not a call (.ret "
                                   "is the return of a history calls row)")
            return entry
        call, back = entry
        if not ret:
            return call
        if back is None:
            raise SessionError(f"goto {text}: the call of row {n} never returned (goto "
                               f"#{n} goes to the call)")
        return back
    value = evaluate_position(text)
    if value >> 63:
        raise SessionError(f"goto {text}: a position is not negative")
    return value


def _symbolizer(target):
    def symbolize(address: int, in_pid: int | None = None) -> str:
        try:
            return target.symbolize(address, in_pid)
        except Exception:    # noqa: BLE001 - a process gone, a TargetError: no name
            return f"{address:#x}"
    return symbolize


def access_row(n: int, a: query.Access, symbolize) -> str:
    """One row of a query's answer: #row, position, pid, tid, ring, IRQL, CR3, RIP
    <symbol>, the instruction, and the access (a write's old and new value)."""
    pid = "-" if a.pid is None else str(a.pid)
    tid = "-" if a.tid is None else str(a.tid)
    where = symbolize(a.rip, a.pid)
    rip = f"{a.rip:#x}" + (f" <{where}>" if where != f"{a.rip:#x}" else "")
    at = f"{a.va:#x} (pa {a.pa:#x})" if a.va is not None else f"pa {a.pa:#x}"
    what = f"{a.kind} {a.size} at {at}"
    if a.kind == "write":
        what += f": {a.old:#x} -> {a.new:#x}"
    return f"#{n:<4} {a.position:>10}  pid {pid:>3} tid {tid:>3}  ring {a.ring}  " \
        f"IRQL {a.irql}  CR3 {a.cr3:#x}  {rip}  {a.instruction}  {what}"


def access_summary(q: query.Query, count: int, position: int, truncated: bool,
                   cached: bool, started_at: int = 0) -> str:
    """The answer's last line: how many, of what, where, up to when, and how it was found
    (``started_at``: the position the index's paused machine ran on from; 0: boot)."""
    noun = {"write": "write", "read": "read", "access": "access"}[q.kind]
    plural = noun + ("es" if noun == "access" else "s")
    where = f"{q.address:#x}" + (f"..{q.address + q.length - 1:#x}" if q.length > 1 else "")
    space = "physical " if q.physical else ""
    whose = "" if q.physical else (f" in pid {q.pid}" if q.pid is not None else
                                   " (kernel space)")
    how = "from the index" if cached else "re-executed from boot" if not started_at else \
        f"the index to position {started_at}, re-executed from there"
    cut = f"; more than {query.MAX_ACCESSES:,} accesses to its pages: only the first " \
        "are shown" if truncated else ""
    return f"{count} {noun if count == 1 else plural} to {space}{where}{whose} from boot " \
        f"to position {position} ({how}){cut}"
