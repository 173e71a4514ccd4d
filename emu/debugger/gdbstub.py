"""The gdb remote stub: stock gdb attaches with ``target remote HOST:PORT``.

``serve`` (``emu run --gdb``) listens, accepts one gdb and runs a Session with a GdbStub
as its front end; ``attach`` (the shell's ``gdbserver``) lends a paused session to gdb
until it detaches. At every stop the session calls ``GdbStub.on_stop``, which sends the
stop reply owed to gdb's last ``s``/``c``/``vCont``, then answers packets until one of
them resumes the machine (GDB manual, appendix E: "Packets", "Stop Reply Packets").

What gdb sees: each thread of each live process is a gdb thread whose id is its tid, and
while no process is on the CPU (a DriverEntry at boot) the kernel is thread 1
(emu.debugger.gdbthreads, which also lists the drivers as gdb's shared libraries);
``g``/``p`` read the registers of the thread chosen with ``Hg`` (default: the CPU's) in the
layout of
emu.debugger.gdbregs; ``m``/``M``/``X`` go through the page walker in that process's
address space; ``Z0``/``Z1`` are the session's breakpoints, ``Z2``-``Z4`` its watchpoints;
``monitor CMD`` runs a debugger command. Only ``k`` and ``D`` end anything: a malformed
packet gets an ``Exx`` reply and the connection goes on.
"""

from __future__ import annotations

import enum
import socket
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from emu import fmt
from emu.debugger import gdbregs, gdbthreads, rsp
from emu.debugger.gdbthreads import KERNEL, ThreadId
from emu.debugger.rsp import (  # noqa: F401 (GdbServerError, parse_address: for callers)
    PACKETS,
    QUERIES,
    V_PACKETS,
    GdbServerError,
    Kind,
    ProtocolError,
    hex_text,
    packet,
    parse_address,
    parse_hex,
    parse_hex_bytes,
)
from emu.debugger.session import Session
from emu.debugger.stops import SessionError, Stop, StopReason
from emu.debugger.target import TargetError
from emu.hw import mmu
from emu.hw.exceptions import Vector
from emu.nt.events import Event
from emu.nt.kernel import MachineStop
from emu.nt.process import Thread

if TYPE_CHECKING:
    from emu.machine import Machine, MachineResult

PACKET_SIZE = 0x4000                # what qSupported announces (PacketSize, hex there)
MAX_READ = (PACKET_SIZE - 16) // 2  # bytes in one m reply (two hex digits each)
RCMD_CHUNK = 1024                   # characters of monitor output per O packet
ANY_THREAD, ALL_THREADS = gdbthreads.ANY, gdbthreads.ALL
Runner = Callable[[str], str]


class GdbSignal(enum.IntEnum):
    """Signal numbers of gdb's remote protocol (gdb/signals.def), not the host's."""

    SIGINT = 2
    SIGILL = 4
    SIGTRAP = 5
    SIGFPE = 8
    SIGSEGV = 11


class Errno(enum.IntEnum):
    """Our ``Exx`` error replies (gdb only shows that the request failed)."""

    BAD_PACKET = 0x01      # malformed packet
    NO_THREAD = 0x02       # no such thread (process)
    REFUSED = 0x03         # the machine cannot do that (now)
    MEMORY = 0x14          # unmapped memory


def error(code: Errno) -> bytes:
    """An ``Exx`` reply."""
    return f"E{int(code):02x}".encode()


OK = b"OK"
UNSUPPORTED = b""                   # the empty reply: any packet we do not know
VECTOR_SIGNAL = {Vector.DE: GdbSignal.SIGFPE, Vector.UD: GdbSignal.SIGILL,
                 Vector.GP: GdbSignal.SIGSEGV, Vector.PF: GdbSignal.SIGSEGV,
                 Vector.SS: GdbSignal.SIGSEGV, Vector.NP: GdbSignal.SIGSEGV,
                 Vector.MF: GdbSignal.SIGFPE, Vector.XM: GdbSignal.SIGFPE}
XFER_OBJECTS = (b"features", b"threads", b"libraries")
WATCH_FIELD = {"write": "watch", "read": "rwatch", "access": "awatch"}
WATCH_KIND = {2: "write", 3: "read", 4: "access"}          # Z2, Z3, Z4
NEWS = (StopReason.CATCH, StopReason.EXCEPTION, StopReason.BUGCHECK, StopReason.EXITED,
        StopReason.HISTORY_START)


class Resume(enum.Enum):
    """What a packet asks of the machine; the serve loop does it, outside the handler."""

    STEP = "step"
    CONTINUE = "continue"
    KILL = "kill"
    DETACH = "detach"
    REVERSE_STEP = "reverse-step"
    REVERSE_CONTINUE = "reverse-continue"


@dataclass
class ReverseWatchStop(Stop):
    """A watchpoint's stop reached going back: before the accessing instruction."""


Plan = Generator["Resume", Stop, Stop]    # yields moves, is sent their stops, returns one


@dataclass(frozen=True)
class _Point:
    """A breakpoint or watchpoint gdb inserted: ``Z<type>,<addr>,<kind>``."""

    type: int
    address: int
    kind: int


class GdbStub(gdbregs.RegisterPackets):
    """The session's front end for one gdb on ``sock`` (see the module docstring)."""

    def __init__(self, session: Session, sock: socket.socket, *,
                 runner: Runner | None = None, trace: TextIO | None = None) -> None:
        self.session = session
        self.runner = runner or DefaultCommands(self).run
        self.last_stop: Stop | None = None
        self.thread: ThreadId | None = None     # Hg: the thread g/m/... act on; None: the CPU's
        self.points: dict[_Point, int] = {}     # what gdb inserted -> the session's number
        self.features: set[str] = set()         # what gdb's qSupported said it understands
        self.detached = False
        self._owed = False                      # gdb waits for a stop reply
        self._running = False
        self._lock = threading.Lock()           # orders Ctrl-C against resuming
        self._watching = None                   # the executive whose events we hear
        self._plan: Plan | None = None          # a reverse move made of several moves
        self._xfer_threads: bytes | None = None     # the documents being read in chunks
        self._xfer_libraries: bytes | None = None
        self.conn = rsp.Connection(sock, self._ctrl_c, trace)
        self.conn.start()
        self._watch_events()

    @property
    def connected(self) -> bool:
        """Whether gdb is still there."""
        return self.conn.connected and not self.detached

    def close(self) -> None:
        """Hang up on gdb."""
        if self._watching is not None:
            self._watching.events.unsubscribe(self._on_event)
            self._watching = None
        self.conn.close()

    def _watch_events(self) -> None:
        """Listen to the session's executive (a new one after going back in time)."""
        executive = self.session.executive
        if executive is not self._watching:
            if self._watching is not None:
                self._watching.events.unsubscribe(self._on_event)
            executive.events.subscribe(self._on_event, logged=True)   # process exits only
            self._watching = executive

    # -- the session's front end ------------------------------------------------------------

    def on_stop(self, stop: Stop) -> bool:
        """The machine paused: tell gdb if it waits, then serve packets until one resumes
        the machine (True) or gdb detaches or goes (False; the machine stays as it is)."""
        with self._lock:
            self._running = False
        self._watch_events()
        if self._plan is not None:
            stop = self._plan_next(stop)
            if stop is None:
                return True                     # the plan moved the machine on
        self.last_stop = stop
        if self._owed and self.connected:
            self._owed = False
            if stop.reason in NEWS and stop.description:
                self.console(stop.description)
            self._send_exit_status(stop)
            self.conn.send(self.stop_reply(stop))
        return self._serve()

    def console(self, text: str) -> None:
        """Print a line in gdb's console (an ``O`` packet: only while gdb waits for a stop)."""
        self.conn.send(b"O" + hex_text(text + "\n"))

    def _send_exit_status(self, stop: Stop | None) -> None:
        """Before a ``W`` reply: the first process's whole exit status, on gdb's console
        (``W`` carries one byte: 0xC0000005 would reach gdb as 05)."""
        if stop is not None and stop.reason is StopReason.EXITED and stop.exit_status:
            self.console(f"{stop.exit_status}; gdb's exit code is its low byte")

    def _on_event(self, event: Event, details: dict[str, Any]) -> None:
        """While the machine runs for gdb, tell it of processes that end (gdb would not
        notice a thread going)."""
        if event is not Event.PROCESS_EXIT or not self._owed or not self.connected or \
                self._plan is not None:       # a reverse plan's probe: told already
            return
        proc = details["process"]
        if proc.exception is not None:
            line = fmt.exception_line(proc, proc.exception)
            last = self.last_stop
            if last is None or last.reason is not StopReason.EXCEPTION or \
                    line not in last.description:      # not told at that stop already
                self.console(line)
        else:
            self.console(f'process {proc.pid} "{proc.name}" exited with status '
                         f"{(proc.exit_status or 0) & 0xFFFF_FFFF:#x}")

    def _serve(self) -> bool:
        """Answer packets until one resumes the machine (True) or gdb leaves (False)."""
        while not self.detached:
            event = self.conn.next_event()          # what came before a hang-up still counts
            if event.kind is Kind.DISCONNECTED:
                break
            if event.kind is Kind.INTERRUPT:
                continue                        # ^C while stopped: nothing to interrupt
            if event.kind is Kind.CORRUPT:
                if not self.conn.ack_mode:      # with acks, our '-' asked for it again
                    self.conn.send(error(Errno.BAD_PACKET))
                continue
            reply = self.handle(event.payload)
            if not isinstance(reply, Resume):
                self.conn.send(reply)
            elif self._resume(reply):
                return True
        self._forget_points()
        return False

    def handle(self, payload: bytes) -> bytes | Resume:
        """The reply to one packet, or what it asks the machine to do."""
        if not payload:
            return UNSUPPORTED
        fn, args = rsp.handler_for(payload)
        if fn is None:
            return UNSUPPORTED
        try:
            return fn(self, args)
        except ProtocolError:
            return error(Errno.BAD_PACKET)
        except TargetError:
            return error(Errno.MEMORY)
        except SessionError:
            return error(Errno.REFUSED)

    def _resume(self, action: Resume) -> bool:
        """Do what a resume packet asked; True when the machine now runs."""
        if action is Resume.DETACH:
            self.conn.send(OK)
            self.detached = True
            return False
        # An ended machine (an exit, a bug check) still has its past: gdb's reverse-stepi
        # and reverse-continue from there go back into it, as from any stop (the `b` packet
        # is refused when the session has no recipe); anything else gets the end again.
        if self.session.ended and action not in (Resume.REVERSE_STEP,
                                                 Resume.REVERSE_CONTINUE):
            if action is not Resume.KILL:
                self._send_exit_status(self.last_stop)
                self.conn.send(self._end_reply())      # nothing runs: the end, again
            return False
        with self._lock:
            if self.conn.pop_interrupt():             # ^C came right after: stop at once
                self.last_stop = Stop(StopReason.INTERRUPT, "interrupted (Ctrl-C)")
                self.conn.send(self.stop_reply(self.last_stop))
                return False
            self._running = True
        self._owed = True
        try:
            self._start(action)
        except SessionError as err:
            with self._lock:
                self._running = False
            self.console(str(err))
            self._owed = False
            self.conn.send(error(Errno.REFUSED))
            return False
        return True

    def _start(self, action: Resume) -> None:
        if action in (Resume.REVERSE_CONTINUE, Resume.REVERSE_STEP) and self._watchpoints():
            self._plan = self._reverse_continue() if action is Resume.REVERSE_CONTINUE \
                else self._reverse_step()
            try:
                self._do(next(self._plan))
            except SessionError:
                self._plan = None
                raise
            return
        self._do(action)

    def _do(self, action: Resume) -> None:
        """Ask the session for ``action``; it happens once the front end returns."""
        session = self.session
        if action is Resume.STEP:
            session.step(1)
        elif action is Resume.CONTINUE:
            session.cont()
        elif action is Resume.REVERSE_STEP:
            session.reverse_step(1)
        elif action is Resume.REVERSE_CONTINUE:
            session.reverse_cont()
        else:
            self._owed = False    # gdb waits for no reply, and hangs up
            self.detached = True
            session.kill()        # raises MachineStop out of the run: no more stops

    # -- going back with watchpoints set ----------------------------------------------------

    def _watchpoints(self) -> bool:
        return any(p.type >= 2 for p in self.points)

    def _plan_next(self, stop: Stop) -> Stop | None:
        """Feed a stop to the plan under way: None if it moved the machine on again, else
        the stop to report (the plan's result, or Ctrl-C, which cuts it short). Other stops
        are the plan's to judge: its probing step may meet again the fault or the end the
        machine stopped at before."""
        plan = self._plan
        if not self.connected or stop.reason is StopReason.INTERRUPT:
            self._plan = None
            plan.close()
            return stop
        try:
            action = plan.send(stop)
        except StopIteration as done:
            self._plan = None
            return done.value
        try:
            self._do(action)
        except SessionError:
            self._plan = None
            plan.close()
            return stop
        with self._lock:
            self._running = True
        return None

    def _reverse_continue(self) -> Plan:
        """gdb's ``bc`` with watchpoints set, as native gdb (and rr) stop going back: at the
        last breakpoint before now, or BEFORE the last instruction that triggered a
        watchpoint, so that the value gdb reads there is the one before that access ("Old
        value" is the later one). The session's reverse-continue stops where the forward run
        stopped for a watchpoint: after the instruction (SDM Vol. 3B 17.2.4: a data
        breakpoint is a trap). So: go back one step, and if that instruction triggers a
        watchpoint (a forward step tells), stop before it; else search with the session, and
        from a watchpoint's stop go back over the instruction that made it."""
        last, position = self.last_stop, self.session.position
        if last is not None and last.reason is StopReason.WATCHPOINT and \
                last.position == position and not isinstance(last, ReverseWatchStop):
            stop = yield Resume.REVERSE_STEP
            return self._as_reverse_watch(last, stop)
        if position > 0:
            stop = yield Resume.REVERSE_STEP
            if stop.reason is StopReason.HISTORY_START:
                return stop
            hit = self._breakpoint_here()
            if hit is not None:
                return hit
            ahead = yield Resume.STEP
            if ahead.reason is StopReason.WATCHPOINT:
                stop = yield Resume.REVERSE_STEP
                return self._as_reverse_watch(ahead, stop)
        stop = yield Resume.REVERSE_CONTINUE
        if stop.reason is StopReason.WATCHPOINT:
            before = yield Resume.REVERSE_STEP
            return self._as_reverse_watch(stop, before)
        return stop

    def _reverse_step(self) -> Plan:
        """gdb's ``bs`` with watchpoints set: one step back, told as a watchpoint's stop when
        the instruction stepped back over triggered one (as native gdb reports it, so that
        gdb's copy of the watched value follows the machine's; else a later forward write
        of the same value would look unchanged to gdb, and go unreported)."""
        last, position = self.last_stop, self.session.position
        stop = yield Resume.REVERSE_STEP
        if last is not None and last.reason is StopReason.WATCHPOINT and \
                last.position == position and not isinstance(last, ReverseWatchStop):
            return self._as_reverse_watch(last, stop)
        if stop.reason is not StopReason.STEP:
            return stop
        ahead = yield Resume.STEP                   # does that instruction trigger one?
        back = yield Resume.REVERSE_STEP
        return self._as_reverse_watch(ahead, back) \
            if ahead.reason is StopReason.WATCHPOINT else back

    @staticmethod
    def _as_reverse_watch(watch: Stop, stop: Stop) -> Stop:
        """The watchpoint's stop, told where the step back over its instruction ended."""
        if stop.reason is not StopReason.STEP:
            return stop
        return ReverseWatchStop(StopReason.WATCHPOINT, watch.description + " (going back: "
                                "stopped before that instruction)", number=watch.number,
                                watch_kind=watch.watch_kind, address=watch.address,
                                position=stop.position)

    def _breakpoint_here(self) -> Stop | None:
        """A breakpoint stop if gdb has one at RIP (Z0/Z1), else None."""
        rip = self.session.target.register("rip")
        for point, number in self.points.items():
            if point.type <= 1 and point.address == rip:
                return Stop(StopReason.BREAKPOINT, f"Breakpoint {number}, "
                            f"{self.session.target.symbolize(rip)}", number=number,
                            position=self.session.position)
        return None

    def _ctrl_c(self) -> None:
        """The reader thread saw ^C: interrupt the running machine, or queue it behind the
        packets already received (a resume among them must not miss it)."""
        with self._lock:
            if self._running:
                self.session.interrupt()
            else:
                self.conn.push_interrupt()

    def _forget_points(self) -> None:
        """gdb has gone: its breakpoints and watchpoints go with it."""
        for number in self.points.values():
            if number in self.session.breakpoints:
                self.session.delete(number)
        self.points.clear()

    # -- stop replies ---------------------------------------------------------------------

    def stop_reply(self, stop: Stop | None) -> bytes:
        """``T05thread:4;`` and the like for ``stop`` (``W`` once the machine has ended).
        The thread that stopped becomes the one g/m/... act on, as gdb then assumes (it
        sends no ``Hg`` before reading the stopped thread's registers, as gdbserver does)."""
        self.thread = None
        if stop is None:
            return b"S05"
        if stop.reason is StopReason.EXITED:
            return f"W{(stop.exit_code or 0) & 0xFF:02x}".encode()
        fields = []
        if stop.reason is StopReason.WATCHPOINT and stop.address is not None:
            fields.append(f"{WATCH_FIELD.get(stop.watch_kind or '', 'awatch')}:"
                          f"{stop.address:x}")
        elif stop.reason is StopReason.BREAKPOINT and self._break_kind(stop) in self.features:
            fields.append(f"{self._break_kind(stop)}:")
        elif stop.reason is StopReason.HISTORY_START:
            fields.append("replaylog:begin")
        fields.append(f"thread:{self._wire(self._current_thread())}")
        return (f"T{int(self._signal(stop)):02x}" + "".join(f + ";" for f in fields)).encode()

    def _break_kind(self, stop: Stop) -> str:
        """``hwbreak`` for a breakpoint gdb inserted with Z1, else ``swbreak``."""
        hardware = any(n == stop.number and p.type == 1 for p, n in self.points.items())
        return "hwbreak" if hardware else "swbreak"

    def _end_reply(self) -> bytes:
        """The reply to a resume once the machine has ended: exited, or killed by a signal."""
        stop = self.last_stop
        if stop is not None and stop.reason is StopReason.BUGCHECK:
            return f"X{int(GdbSignal.SIGSEGV):02x}".encode()
        code = stop.exit_code if stop is not None and stop.exit_code is not None else 0
        return f"W{code & 0xFF:02x}".encode()

    @staticmethod
    def _signal(stop: Stop) -> GdbSignal:
        if stop.reason is StopReason.INTERRUPT:
            return GdbSignal.SIGINT
        if stop.reason is StopReason.BUGCHECK:
            return GdbSignal.SIGSEGV
        return VECTOR_SIGNAL.get(getattr(stop.exception, "vector", None), GdbSignal.SIGTRAP)

    # -- threads ----------------------------------------------------------------------------

    @property
    def multiprocess(self) -> bool:
        """Whether thread ids travel as ``pPID.TID``: never. gdb offers multiprocess+, but
        then makes each process an inferior of its own, and gdb 13 gives an inferior it
        finds in the thread list the default x86-64 description instead of ours (its
        ``g`` reply is then "too long" and gdb hangs up). Client ids name threads alone
        (one table for processes and threads, as Windows), and ``info threads`` shows each
        thread's process in its name and extra info; ``pPID.TID`` ids are still accepted."""
        return False

    def _wire(self, tid: ThreadId) -> str:
        return tid.wire(self.multiprocess)

    def _current_thread(self) -> ThreadId:
        return gdbthreads.current(self.session.executive, self.session.target.current_pid())

    def threads(self) -> list[ThreadId]:
        """gdb's thread list: the thread on the CPU (or the kernel), then every other thread
        of every live process (emu.debugger.gdbthreads)."""
        return gdbthreads.listed(self.session.executive, self._current_thread())

    def _selected_thread(self) -> Thread | None:
        """The thread whose registers g/p read (None: the CPU's own)."""
        if self.thread is None or self.thread == self._current_thread():
            return None
        return gdbthreads.thread_object(self.session.executive, self.thread)

    def _selected(self) -> int | None:
        """The pid whose address space memory packets act on (None: the CPU's own)."""
        pid = None if self.thread is None else self.thread.pid
        if pid in (None, KERNEL, self.session.target.current_pid()):
            return None
        return pid

    def _thread_id(self, text: bytes) -> ThreadId | None:
        """A thread id of a packet (``TID``, ``pPID.TID``, ``pPID``): None for any or all
        threads, else a listed thread (the first of PID for ``pPID``); SessionError if
        there is no such thread."""
        pid, tid = gdbthreads.parse_thread_id(text)
        listed = self.threads()
        if tid in (ANY_THREAD, ALL_THREADS):
            if pid in (None, ANY_THREAD, ALL_THREADS):
                return None
            found = next((t for t in listed if t.pid == pid), None)
        else:
            found = next((t for t in listed if t.tid == tid and pid in (None, t.pid)), None)
        if found is None:
            raise SessionError(f"no thread {text.decode('latin-1')}")
        return found

    @packet(PACKETS, "H")
    def _set_thread(self, args: bytes) -> bytes:
        if args[:1] not in (b"g", b"c"):
            raise ProtocolError(f"bad H packet {args!r}")
        try:
            tid = self._thread_id(args[1:])
        except SessionError:
            return error(Errno.NO_THREAD)
        if args[:1] == b"g":
            self.thread = tid
        return OK

    @packet(PACKETS, "T")
    def _thread_alive(self, args: bytes) -> bytes:
        try:
            found = self._thread_id(args)
        except SessionError:
            return error(Errno.NO_THREAD)
        return OK if found is not None else error(Errno.NO_THREAD)

    @packet(QUERIES, "qC")
    def _current_thread_query(self, args: bytes) -> bytes:
        return f"QC{self._wire(self._current_thread())}".encode()

    @packet(QUERIES, "qfThreadInfo")
    def _first_threads(self, args: bytes) -> bytes:
        return b"m" + ",".join(self._wire(t) for t in self.threads()).encode()

    @packet(QUERIES, "qsThreadInfo")
    def _more_threads(self, args: bytes) -> bytes:
        return b"l"

    @packet(QUERIES, "qThreadExtraInfo")
    def _thread_extra(self, args: bytes) -> bytes:
        """``pid 12 threads, tid 16, running, ring 3``: what ``info threads`` shows beside the
        id (process, thread, state, ring)."""
        if gdbthreads.parse_thread_id(args)[1] in (ANY_THREAD, ALL_THREADS):
            raise ProtocolError("qThreadExtraInfo needs one thread")
        try:
            tid = self._thread_id(args)
        except SessionError:
            return error(Errno.NO_THREAD)
        return hex_text(self._describe(tid))

    def _describe(self, tid: ThreadId) -> str:
        return gdbthreads.describe(self.session.executive, tid, self._ring(tid))

    def _ring(self, tid: ThreadId) -> int | None:
        """The privilege level thread ``tid`` runs (or was stopped) at; None: never run."""
        if tid == self._current_thread():
            return self.session.executive.cpu.reg("cs") & 3
        thread = gdbthreads.thread_object(self.session.executive, tid)
        if thread is None or thread.context is None:
            return None
        return gdbthreads.saved_registers(thread, {})["cs"] & 3

    # -- memory ---------------------------------------------------------------------------

    @packet(PACKETS, "m")
    def _read_memory(self, args: bytes) -> bytes:
        address, n = _address_length(args)
        data = self.session.target.read_prefix(address, min(n, MAX_READ), self._selected())
        return data.hex().encode() if data or not n else error(Errno.MEMORY)

    @packet(PACKETS, "M")
    def _write_memory(self, args: bytes) -> bytes:
        header, sep, data = args.partition(b":")
        if not sep:
            raise ProtocolError("M needs ADDR,LENGTH:DATA")
        return self._write(*_address_length(header), parse_hex_bytes(data))

    @packet(PACKETS, "X")
    def _write_binary(self, args: bytes) -> bytes:
        header, sep, data = args.partition(b":")
        if not sep:
            raise ProtocolError("X needs ADDR,LENGTH:DATA")
        return self._write(*_address_length(header), data)

    def _write(self, address: int, n: int, data: bytes) -> bytes:
        if len(data) != n:
            raise ProtocolError(f"length {n} but {len(data)} bytes of data")
        if n:
            self.session.target.write_virtual(address, data, self._selected())
        return OK

    # -- running --------------------------------------------------------------------------

    @packet(PACKETS, "?")
    def _why_stopped(self, args: bytes) -> bytes:
        return self.stop_reply(self.last_stop)

    @packet(PACKETS, "s")
    def _step(self, args: bytes) -> Resume:
        self._resume_at(args)
        return Resume.STEP

    @packet(PACKETS, "c")
    def _continue(self, args: bytes) -> Resume:
        self._resume_at(args)
        return Resume.CONTINUE

    @packet(PACKETS, "S")
    def _step_signal(self, args: bytes) -> Resume:
        signal, _, address = args.partition(b";")
        parse_hex(signal, "signal")            # checked; signals are not delivered
        self._resume_at(address)
        return Resume.STEP

    @packet(PACKETS, "C")
    def _continue_signal(self, args: bytes) -> Resume:
        signal, _, address = args.partition(b";")
        parse_hex(signal, "signal")
        self._resume_at(address)
        return Resume.CONTINUE

    def _resume_at(self, address: bytes) -> None:
        """``s ADDR``/``c ADDR``: resume at ADDR instead of RIP."""
        if address:
            self._set_register("rip", parse_hex(address, "address"))

    @packet(V_PACKETS, "vCont?")
    def _vcont_actions(self, args: bytes) -> bytes:
        return b"vCont;c;C;s;S"

    @packet(V_PACKETS, "vCont")
    def _vcont(self, args: bytes) -> Resume:
        """``vCont;s:4;c``: one CPU runs everything, so a step for any thread is one
        instruction of the machine, and otherwise it continues."""
        items = args.split(b";")
        if items[0] or len(items) < 2:
            raise ProtocolError("vCont needs ;ACTION[:THREAD]...")
        steps = False
        for item in items[1:]:
            action, _, thread = item.partition(b":")
            if action[:1] in (b"S", b"C"):
                parse_hex(action[1:], "signal")
            elif action not in (b"s", b"c"):
                raise ProtocolError(f"vCont action {action!r} is not supported")
            if thread:
                gdbthreads.parse_thread_id(thread)
            steps |= action[:1] in (b"s", b"S")
        return Resume.STEP if steps else Resume.CONTINUE

    @packet(PACKETS, "b")
    def _reverse(self, args: bytes) -> bytes | Resume:
        if args not in (b"s", b"c"):
            raise ProtocolError(f"bad packet b{args!r}")
        if self.session.factory is None:
            return UNSUPPORTED
        return Resume.REVERSE_STEP if args == b"s" else Resume.REVERSE_CONTINUE

    @packet(PACKETS, "k")
    def _kill(self, args: bytes) -> Resume:
        return Resume.KILL

    @packet(V_PACKETS, "vKill")
    def _vkill(self, args: bytes) -> Resume:
        self.conn.send(OK)
        return Resume.KILL

    @packet(PACKETS, "D")
    def _detach(self, args: bytes) -> Resume:
        return Resume.DETACH

    # -- breakpoints and watchpoints -------------------------------------------------------

    @packet(PACKETS, "Z")
    def _insert(self, args: bytes) -> bytes:
        point = _point(args)
        if point.type > 4:
            return UNSUPPORTED
        if point not in self.points:              # gdb may insert twice: idempotent
            if point.type <= 1:
                number = self.session.add_breakpoint(point.address)
            else:
                number = self.session.add_watchpoint(point.address, point.kind,
                                                     WATCH_KIND[point.type])
            self.points[point] = number
        return OK

    @packet(PACKETS, "z")
    def _remove(self, args: bytes) -> bytes:
        point = _point(args)
        if point.type > 4:
            return UNSUPPORTED
        number = self.points.pop(point, None)
        if number is not None and number in self.session.breakpoints:
            self.session.delete(number)
        return OK

    # -- queries ----------------------------------------------------------------------------

    @packet(QUERIES, "qSupported")
    def _supported(self, args: bytes) -> bytes:
        self.features = {f[:-1].decode("latin-1") for f in args.split(b";") if f[-1:] == b"+"}
        ours = [f"PacketSize={PACKET_SIZE:x}", "QStartNoAckMode+", "qXfer:features:read+",
                "qXfer:threads:read+", "qXfer:libraries:read+", "swbreak+", "hwbreak+",
                "vContSupported+"]
        if self.session.factory is not None:
            ours += ["ReverseStep+", "ReverseContinue+"]
        return ";".join(ours).encode()

    @packet(QUERIES, "QStartNoAckMode")
    def _no_ack(self, args: bytes) -> bytes:
        return OK          # the reader thread has already stopped acknowledging

    @packet(QUERIES, "qAttached")
    def _attached(self, args: bytes) -> bytes:
        return b"1"        # attached to a machine that was there: gdb detaches on quit

    @packet(QUERIES, "qSymbol")
    def _symbol(self, args: bytes) -> bytes:
        return OK          # no symbol lookups wanted

    @packet(QUERIES, "qXfer")
    def _xfer(self, args: bytes) -> bytes:
        """``qXfer:OBJECT:read:ANNEX:OFFSET,LENGTH`` for the target description
        (``features``, annex ``target.xml``), the thread list (``threads``) and the loaded
        images (``libraries``): the document's bytes from OFFSET, ``m`` more to come or
        ``l`` last. An unknown object: the empty reply; a bad annex or range: ``E01``."""
        parts = args.split(b":")
        if len(parts) != 4 or parts[1] != b"read" or parts[0] not in XFER_OBJECTS:
            return UNSUPPORTED
        offset, length = _address_length(parts[3])
        if parts[0] == b"features":
            if parts[2] != b"target.xml":
                return error(Errno.BAD_PACKET)
            document = gdbregs.TARGET_XML
        elif parts[2]:
            return error(Errno.BAD_PACKET)          # threads and libraries have no annex
        elif parts[0] == b"threads":
            document = self._threads_document(offset)
        else:
            document = self._libraries_document(offset)
        chunk = document[offset:offset + min(length, MAX_READ)]
        return (b"l" if offset + len(chunk) >= len(document) else b"m") + chunk

    def _threads_document(self, offset: int) -> bytes:
        """qXfer:threads: made at offset 0, the same bytes for the reads that follow."""
        if offset == 0 or self._xfer_threads is None:
            ex = self.session.executive
            entries = []
            for tid in self.threads():
                thread = gdbthreads.thread_object(ex, tid)
                name = thread.process.name if thread is not None else "kernel"
                entries.append((tid, name, self._describe(tid)))
            self._xfer_threads = gdbthreads.threads_xml(entries, self.multiprocess)
        return self._xfer_threads

    def _libraries_document(self, offset: int) -> bytes:
        """qXfer:libraries: the drivers loaded (emu.debugger.gdbthreads.libraries_xml)."""
        if offset == 0 or self._xfer_libraries is None:
            self._xfer_libraries = gdbthreads.libraries_xml(self.session.executive)
        return self._xfer_libraries

    @packet(QUERIES, "qRcmd")
    def _monitor(self, args: bytes) -> bytes:
        """``monitor CMD``: the command's output in O packets, then OK."""
        line = parse_hex_bytes(args).decode("utf-8", "replace").strip()
        if line == "why":
            output = (self.last_stop.description if self.last_stop else "not stopped") + "\n"
        else:
            try:
                output = self.runner(line)
            except MachineStop:
                raise                           # "monitor kill": the machine ends
            except Exception as err:            # noqa: BLE001 - a command's failure, not ours
                output = f"error: {err or type(err).__name__}\n"
        for i in range(0, len(output), RCMD_CHUNK):
            self.conn.send(b"O" + hex_text(output[i:i + RCMD_CHUNK]))
        return OK


def _address_length(text: bytes) -> tuple[int, int]:
    """``ADDR,LENGTH`` of m/M/X packets (and qXfer's ``OFFSET,LENGTH``)."""
    addr, sep, length = text.partition(b",")
    if not sep:
        raise ProtocolError("expected ADDR,LENGTH")
    address, n = parse_hex(addr, "address"), parse_hex(length, "length")
    if not 0 <= address < 1 << 64 or n < 0:
        raise ProtocolError("bad address or length")
    return address, n


def _point(args: bytes) -> _Point:
    """``TYPE,ADDR,KIND[;cond...]`` of Z/z packets."""
    fields = args.split(b";", 1)[0].split(b",")
    if len(fields) != 3:
        raise ProtocolError("expected TYPE,ADDR,KIND")
    point = _Point(parse_hex(fields[0], "type"), parse_hex(fields[1], "address"),
                   parse_hex(fields[2], "kind"))
    if point.type < 0 or point.kind < 0 or not 0 <= point.address < 1 << 64 or \
            (point.type >= 2 and point.address + point.kind > 1 << 64):
        raise ProtocolError("bad type, address or length")
    return point


class DefaultCommands:
    """``monitor help``, ``monitor walk VA`` and ``monitor why`` without the debugger
    shell (the shell lends its own commands through ``runner``)."""

    def __init__(self, stub: GdbStub) -> None:
        self.stub = stub

    def run(self, line: str) -> str:
        """Run one command line; return its output."""
        word, _, arg = line.partition(" ")
        if word == "walk":
            return self.walk(arg.strip())
        if word in ("help", ""):
            return ("monitor commands: walk VA (the page walk of VA, level by level), "
                    "why (why the machine stopped), help\n")
        return f"unknown command '{word}' (try 'monitor help')\n"

    def walk(self, arg: str) -> str:
        """The 4-level walk of ``arg`` in the selected thread's address space."""
        try:
            va = int(arg, 0)
        except ValueError:
            return f"walk: bad address '{arg[:40]}' (e.g. walk 0x401000)\n"
        target = self.stub.session.target
        try:
            tr = target.walk(va, self.stub._selected())
        except mmu.PageFault as fault:
            return "".join(f"{step}\n" for step in fault.steps) + f"#PF: {fault.reason}\n"
        except mmu.GeneralProtection as fault:
            return f"#GP: {fault}\n"
        return "".join(f"{step}\n" for step in tr.steps) + f"{va:#x} -> {tr.pa:#x}\n"


# -- starting --------------------------------------------------------------------------------

def _wait_for_gdb(host: str, port: int, log: TextIO | None, ready: Callable[[int], None] | None,
                  allow_remote: bool, accept_timeout: float | None) -> socket.socket:
    listener = rsp.listen(host, port, allow_remote=allow_remote)
    bound = listener.getsockname()[1]
    _announce(log, f"gdb stub: listening on {host}:{bound} "
                   f"(in gdb: target remote {host}:{bound})")
    if ready is not None:
        ready(bound)
    sock = rsp.accept(listener, accept_timeout)
    _announce(log, "gdb stub: gdb connected")
    return sock


def _announce(log: TextIO | None, text: str) -> None:
    if log is not None:
        log.write(text + "\n")
        log.flush()


def serve(machine: Machine, host: str = "127.0.0.1", port: int = 0, *,
          ready: Callable[[int], None] | None = None, log: TextIO | None = None,
          trace: TextIO | None = None, runner: Runner | None = None,
          allow_remote: bool = False, accept_timeout: float | None = None,
          factory: Callable[[], Machine] | None = None,
          on_session: Callable[[Session], None] | None = None) -> MachineResult:
    """``emu run --gdb``: wait for gdb on host:port, then run ``machine`` under it, stopped
    before its first instruction (the first driver's DriverEntry if it has drivers); when
    gdb detaches or goes, the machine runs on to its end. ``ready(port)`` is called once
    listening; ``log`` gets a line per connection event, ``trace`` every packet;
    ``on_session(session)`` lets the ``runner`` of ``monitor`` see the session.
    GdbServerError (one line) if the stub cannot listen or nobody connects in time."""
    sock = _wait_for_gdb(host, port, log, ready, allow_remote, accept_timeout)
    stubs: list[GdbStub] = []
    try:
        session = Session(machine, lambda stop: stubs[0].on_stop(stop), factory=factory,
                          stop_at_driver=True)
        if on_session is not None:
            on_session(session)
        stubs.append(GdbStub(session, sock, runner=runner, trace=trace))
        return session.run()
    finally:
        if stubs:
            stubs[0].close()
        else:
            sock.close()
        _announce(log, "gdb stub: connection closed")


def attach(session: Session, host: str = "127.0.0.1", port: int = 0, *,
           runner: Runner | None = None, log: TextIO | None = None,
           trace: TextIO | None = None, stop: Stop | None = None,
           ready: Callable[[int], None] | None = None, allow_remote: bool = False,
           accept_timeout: float | None = None) -> bool:
    """The shell's ``gdbserver``: lend the paused ``session`` (stopped at ``stop``) to gdb.
    True if gdb resumed the machine: its stops go to gdb until it detaches, then back to the
    session's previous front end. False if gdb left before resuming."""
    sock = _wait_for_gdb(host, port, log, ready, allow_remote, accept_timeout)
    # While gdb has the session, going back re-executes from boot in this process: a
    # snapshot is a forked emulator, and its copy of the stub would have no thread reading
    # gdb's socket (threads do not survive fork), while this one's would go on reading it.
    ring, session.snapshots = session.snapshots, None
    if ring is not None:
        ring.forget_all()
    stub = GdbStub(session, sock, runner=runner, trace=trace)
    previous = session.on_stop

    def give_back() -> None:
        session.on_stop = previous
        session.snapshots = ring           # snapshots again, from the next instruction on
        stub.close()
        _announce(log, "gdb stub: gdb has gone; the debugger has the machine again")

    def on_stop(next_stop: Stop) -> bool:
        if stub.on_stop(next_stop):
            return True
        give_back()
        return previous(next_stop)

    session.on_stop = on_stop
    if stub.on_stop(stop or Stop(StopReason.INTERRUPT, "stopped in the debugger")):
        return True
    give_back()
    return False
