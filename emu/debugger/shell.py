"""``emu debug``: the debugger shell. Run control and breakpoints live here; the commands
that show state come from emu.debugger.cmd_state (StateCommands).

The shell is the session's front end: at every stop the session calls ``on_stop``, which
prints where the machine is and reads commands until one of them resumes it. Commands come
from a terminal (history, tab completion), from a file (``emu debug -x FILE``) or from a
pipe; in batch mode each command is echoed after the prompt, so a transcript reads as a
session. All output goes through ``message``/``error`` to ``self.stdout``.
"""

from __future__ import annotations

import cmd
import difflib
import inspect
import os
import sys
from typing import TextIO

from emu.debugger import catch
from emu.debugger.cmd_state import StateCommands, no_argument
from emu.debugger.expr import ExprError, evaluate
from emu.debugger.history import HistoryCommands
from emu.debugger.session import Session
from emu.debugger.stops import (
    Breakpoint,
    CatchKind,
    Catchpoint,
    SessionError,
    Stop,
    Watchpoint,
)
from emu.debugger.target import Target, TargetError
from emu.hw.exceptions import Vector
from emu.nt import exports
from emu.nt.kernel import MachineStop
from emu.nt.syscalls import Service


def _without_address(reason: str, address: int) -> str:
    """A target's reason without its leading ``0x...: `` when it names ``address``."""
    prefix = f"{address:#x}: "
    return reason[len(prefix):] if reason.startswith(prefix) else reason


class Quit(Exception):
    """The user ended the debugger (``quit``, or the end of a batch script)."""


class Shell(HistoryCommands, StateCommands, cmd.Cmd):
    """The debugger's command interpreter (see the module docstring)."""

    intro = None
    doc_header = "Commands (help COMMAND for more):"
    identchars = cmd.Cmd.identchars + "-"

    def __init__(self, target: Target, session: Session | None = None, *,
                 stdin: TextIO | None = None, stdout: TextIO | None = None,
                 batch: bool = False, stop_on_error: bool = False) -> None:
        super().__init__(stdin=stdin, stdout=stdout or sys.stdout)
        self.use_rawinput = not batch and stdin is None
        self.batch = batch
        self.stop_on_error = stop_on_error
        self.target = target
        self.session = session
        self.view_pid: int | None = None
        self.stop_info: Stop | None = None
        self.resumed = False
        self.failures = 0
        self._lines: list[str] = []

    # -- output ---------------------------------------------------------------------------

    def message(self, text: str) -> None:
        """Print ``text`` (one or more lines)."""
        self.stdout.write(text.rstrip("\n") + "\n")

    def error(self, text: str) -> None:
        """Print a one-line error."""
        self.failures += 1
        self.stdout.write(f"error: {text}\n")

    RUN_COMMANDS = frozenset({"stepi", "si", "nexti", "ni", "finish", "continue", "c", "until",
                              "reverse-stepi", "rsi", "reverse-continue", "rc", "kill",
                              "reverse-nexti", "rni", "reverse-next", "reverse-finish",
                              "quit", "q", "gdbserver", "goto"})

    def run_command(self, line: str) -> str:
        """Run one state command and return what it printed (gdb's ``monitor``: gdb keeps
        control of running, so run-control commands are refused)."""
        import io
        if not line.strip():
            line = "help"      # an empty `monitor` lists them (cmd's empty line repeats one)
        word = line.split()[0]
        if word in self.RUN_COMMANDS:
            return f"error: '{word}' runs the machine: use gdb's own command for that\n"
        saved, self.stdout = self.stdout, io.StringIO()
        try:
            self.onecmd(line)
            return self.stdout.getvalue()
        finally:
            self.stdout = saved

    # -- the loop -------------------------------------------------------------------------

    @property
    def prompt(self) -> str:   # type: ignore[override]
        if self.session is not None and self.session.ended:
            return "(emu ended) "
        try:
            pid = self.target.current_pid()
            rip = self.target.register("rip")
            ring = self.target.register("cs") & 3
        except TargetError:
            return "(emu) "
        who = f"pid {pid}" if pid is not None else _no_process(ring)
        view = f" view {self.view_pid}" if self.view_pid is not None else ""
        return f"(emu {who}{view} ring {ring} {rip:#x}) "

    def on_stop(self, stop: Stop) -> bool:
        """The session paused: report it, then read commands until one resumes the machine.
        Returns True when resumed; raises Quit when the user ends the debugger."""
        if self.goto_again(stop):          # goto, on its way (emu.debugger.history)
            return True
        self.stop_info = stop
        self.target = self.session.target
        self.report_stop(stop)
        self.resumed = False
        while not self.resumed:
            line = self._read_line()
            if line is None:
                raise Quit()
            self._run_line(line)
        return True

    def interact(self) -> None:
        """Read and run commands until the input ends or ``quit`` (a crash dump's loop)."""
        try:
            while (line := self._read_line()) is not None:
                self._run_line(line)
        except Quit:
            pass

    def _run_line(self, line: str) -> None:
        """Run one command; with ``stop_on_error`` (``emu debug --stop-on-error``), a command
        that fails ends the script there, as gdb -batch ends at a script's first error."""
        before = self.failures
        self.onecmd(line)
        if self.stop_on_error and self.failures > before:
            raise Quit()

    def _read_line(self) -> str | None:
        if self.use_rawinput:
            self._setup_readline()
            try:
                return input(self.prompt)
            except EOFError:
                self.stdout.write("\n")
                return None
            except KeyboardInterrupt:
                self.stdout.write("^C\n")
                return ""
        line = self._next_input_line()
        if line is None:
            return None
        if self.batch and line.strip() and not line.lstrip().startswith("#"):
            self.stdout.write(f"{self.prompt}{line}\n")
        return line

    def _setup_readline(self) -> None:
        """History and tab completion at a terminal (once)."""
        if getattr(self, "_readline_ready", False):
            return
        self._readline_ready = True
        try:
            import readline
        except ImportError:          # no readline here: plain input, no completion
            return
        readline.set_completer(self.complete)
        readline.set_completer_delims(" \t\n*=,[]()+")   # symbols keep ! and $ and .
        readline.parse_and_bind(f"{self.completekey}: complete")

    def completenames(self, text: str, *ignored) -> list[str]:
        """Command names as typed (reverse-stepi), for the first word."""
        names = {n[3:].replace("_", "-") for n in self.get_names()
                 if n.startswith("do_") and n != "do_EOF"}
        return sorted(n for n in names if n.startswith(text))

    def _next_input_line(self) -> str | None:
        """One line of input, read byte by byte from the file descriptor when there is one:
        nothing is read ahead, so a resumed snapshot (a forked copy of this process, which
        shares the descriptor) goes on at the right line."""
        try:
            fd = self.stdin.fileno()
        except (AttributeError, OSError, ValueError):
            line = self.stdin.readline()
            return line.rstrip("\r\n") if line else None
        data = bytearray()
        while (byte := os.read(fd, 1)) not in (b"", b"\n"):
            data += byte
        if not data and byte == b"":
            return None
        return data.decode("utf-8", "replace").rstrip("\r")

    def save_state(self) -> dict:
        """What a resumed snapshot needs of this shell (see emu.debugger.snapshots)."""
        return {"failures": self.failures, "lastcmd": self.lastcmd,
                "history": self.history_state()}

    def load_state(self, state: dict) -> None:
        """Take over the state of the shell that handed the session on."""
        self.failures = state["failures"]
        self.lastcmd = state["lastcmd"]
        self.load_history_state(state["history"])

    def emptyline(self) -> bool:
        """An empty line repeats the last command at a terminal, as in gdb."""
        if self.use_rawinput and self.lastcmd:
            return self.onecmd(self.lastcmd)
        return False

    def onecmd(self, line: str) -> bool:
        if line.lstrip().startswith("#"):
            return False
        try:
            return bool(super().onecmd(line))
        except (TargetError, ExprError, SessionError, ValueError) as err:
            self.error(str(err))
            return False
        except (Quit, MachineStop):
            raise                        # quit, kill: they end the session's run on purpose
        except Exception as err:         # noqa: BLE001 - a bug of ours must not end the session
            word = line.split()[0] if line.split() else line
            self.error(f"{word}: internal error ({type(err).__name__}: {err}); please report it")
            return False

    def parseline(self, line: str):
        """As cmd.Cmd, with ``reverse-stepi`` naming do_reverse_stepi."""
        command, arg, line = super().parseline(line)
        if command:
            command = command.replace("-", "_")
        return command, arg, line

    def do_help(self, arg: str) -> None:
        """help [COMMAND]: list the commands, or explain one."""
        name = arg.strip().replace("-", "_")
        if not name:
            super().do_help("")
            return
        method = getattr(self, f"do_{name}", None)
        if method is None or not method.__doc__:
            self.default(arg)
            return
        self.message(inspect.cleandoc(method.__doc__))

    def print_topics(self, header: str, cmds, cmdlen: int, maxcol: int) -> None:
        """``help``'s lists, with commands spelled as typed (reverse-stepi)."""
        shown = [c.replace("_", "-") for c in cmds if c != "EOF"]
        super().print_topics(header, shown, cmdlen, maxcol)

    def default(self, line: str) -> None:
        """An unknown command: say so, and suggest the nearest one."""
        word = line.split()[0]
        names = sorted({n[3:].replace("_", "-") for n in self.get_names()
                        if n.startswith("do_") and n != "do_EOF"})
        near = difflib.get_close_matches(word, names, n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else " (try 'help')"
        self.error(f"unknown command '{word}'{hint}")

    def completedefault(self, text: str, *_args) -> list[str]:
        """Complete symbols and register names (``$`` or ``*`` before them kept)."""
        lead = text[:len(text) - len(text.lstrip("$*"))]
        bare = text[len(lead):]
        words = [*self.target.symbol_names(), *self.target.register_names()]
        return sorted({lead + w for w in words if w.startswith(bare)})

    def report_stop(self, stop: Stop) -> None:
        """Say why and where the machine stopped (a view that fails is one error line: the
        session goes on)."""
        if stop.description:
            self.message(stop.description)
        if stop.ended:
            return
        try:
            self.message(self.where())
        except (TargetError, ExprError, SessionError) as err:
            self.error(str(err))
        except Exception as err:         # noqa: BLE001 - a bug of ours must not end the session
            self.error(f"where: internal error ({type(err).__name__}: {err}); please report it")

    def where(self) -> str:
        """``0x401020 <hello!main+0x4>: mov eax, 1   [pid 12 "hello", ring 3]``; an instruction
        that cannot be read says why in its place: ``(cannot read: not mapped: ...)``."""
        t = self.target
        rip = t.register("rip")
        pid = t.current_pid()
        proc = next((p for p in t.processes() if p.pid == pid), None)
        ring = t.register("cs") & 3
        who = f'pid {pid} "{proc.name}"' if proc else _no_process(ring)
        try:
            insns = t.disassemble(rip, 1)
            text = insns[0][2] if insns else f"(cannot read: {rip:#x} is cut short)"
        except TargetError as err:
            text = f"(cannot read: {_without_address(str(err), rip)})"
            if exports.handler_at(rip) is not None:    # a breakpoint on nt!DbgPrint, say
                text = "(a kernel export: the executive runs it)"
        return f"=> {rip:#x} <{t.symbolize(rip)}>: {text}   [{who}, ring {ring}]"

    # -- run control ----------------------------------------------------------------------

    def _live(self) -> Session:
        if self.session is None:
            raise SessionError("no machine is running (a crash dump cannot run)")
        return self.session

    def _resume(self, action) -> bool:
        action()
        self.resumed = True
        self.view_pid = None
        return True

    def _count(self, arg: str, command: str) -> int:
        """The N of ``stepi N``: an expression whose value, read as signed, is positive."""
        if not arg.strip():
            return 1
        n = evaluate(arg, self.target, self.view_pid)
        signed = n - (1 << 64) if n >> 63 else n
        if signed <= 0:
            raise SessionError(f"{command}: the count must be positive, not {signed}")
        return n

    def do_stepi(self, arg: str) -> bool:
        """stepi [N]: run N instructions (default 1), into calls, system calls and faults."""
        n = self._count(arg, "stepi")
        return self._resume(lambda: self._live().step(n))

    do_si = do_stepi

    def do_nexti(self, arg: str) -> bool:
        """nexti: run one instruction; a call runs until it returns."""
        no_argument("nexti", arg)
        return self._resume(self._live().next)

    do_ni = do_nexti

    def do_finish(self, arg: str) -> bool:
        """finish: run until the current function returns."""
        no_argument("finish", arg)
        return self._resume(self._live().finish)

    def do_continue(self, arg: str) -> bool:
        """continue: run until a breakpoint, watchpoint, catchpoint, Ctrl-C or the end."""
        no_argument("continue", arg)
        return self._resume(self._live().cont)

    do_c = do_continue

    def do_until(self, arg: str) -> bool:
        """until ADDR: run until ADDR is reached in this process (or something stops first)."""
        if not arg.strip():
            return self.do_nexti(arg)
        address = self._location(arg)
        return self._resume(lambda: self._live().until(address))

    def do_reverse_stepi(self, arg: str) -> bool:
        """reverse-stepi [N]: go back N steps (instructions or exceptions; the machine
        re-executes from a snapshot or from boot)."""
        n = self._count(arg, "reverse-stepi")
        return self._resume(lambda: self._live().reverse_step(n))

    do_rsi = do_reverse_stepi

    def do_reverse_continue(self, arg: str) -> bool:
        """reverse-continue: go back to the last breakpoint, watchpoint or catchpoint hit."""
        no_argument("reverse-continue", arg)
        return self._resume(self._live().reverse_cont)

    do_rc = do_reverse_continue

    def do_reverse_nexti(self, arg: str) -> bool:
        """reverse-nexti: go back one step; a call is gone back over, to before it."""
        no_argument("reverse-nexti", arg)
        return self._resume(self._live().reverse_next)

    do_rni = do_reverse_next = do_reverse_nexti

    def do_reverse_finish(self, arg: str) -> bool:
        """reverse-finish: go back to before the call of the current function."""
        no_argument("reverse-finish", arg)
        return self._resume(self._live().reverse_finish)

    def do_kill(self, arg: str) -> bool:
        """kill: end the machine now (its last state stays readable; nothing runs it
        again, forward or back)."""
        no_argument("kill", arg)
        return self._resume(self._live().kill)

    def do_quit(self, arg: str) -> bool:
        """quit: leave the debugger."""
        raise Quit()

    do_q = do_quit
    do_EOF = do_quit

    # -- breakpoints ----------------------------------------------------------------------

    def _location(self, text: str) -> int:
        """``*EXPR`` or ``EXPR``: an address (symbols, registers, arithmetic)."""
        text = text.strip()
        if text.startswith("*"):
            text = text[1:]
        return evaluate(text, self.target, self.view_pid)

    def _split_options(self, arg: str) -> tuple[str, int | None, str | None, bool]:
        """``LOCATION [pid N] [if COND]``, with ``-phys`` anywhere before the condition; PID
        must name a process of this machine."""
        cond = None
        if " if " in f" {arg} ":
            arg, cond = (f" {arg} ".split(" if ", 1) + [""])[:2]
            cond = cond.strip()
            if not cond:
                raise SessionError("'if' needs a condition, e.g. break main if rdi == 2")
        words = arg.split()
        physical = "-phys" in words
        words = [w for w in words if w != "-phys"]
        pid = None
        if "pid" in words:
            at = words.index("pid")
            if at + 1 >= len(words):
                raise SessionError("pid needs a number")
            try:
                pid = int(words[at + 1], 0)
            except ValueError:
                raise SessionError(f"bad process id '{words[at + 1]}' (see ps)") from None
            self.target.process(pid)                 # TargetError: no such process
            del words[at:at + 2]
        return " ".join(words), pid, cond, physical

    def do_break(self, arg: str) -> None:
        """break LOCATION [pid N] [if COND]: stop before the instruction at LOCATION.

        LOCATION is a symbol (main, hello!main, echo.sys!DispatchRead) or *ADDRESS; with
        -phys, ADDRESS is physical (any process, any virtual address mapping it). COND is an
        expression (rax == 0, [rsp+8] > 3): the stop happens only when it is not zero."""
        self._break(arg, temporary=False)

    do_b = do_break

    def do_tbreak(self, arg: str) -> None:
        """tbreak LOCATION [pid N] [if COND]: a breakpoint deleted at its first stop."""
        self._break(arg, temporary=True)

    def _break(self, arg: str, *, temporary: bool) -> None:
        where, pid, cond, physical = self._split_options(arg)
        if not where:
            raise SessionError("break needs a location (a symbol or *ADDRESS)")
        address = self._location(where)
        n = self._live().add_breakpoint(address, pid=pid, physical=physical, condition=cond,
                                         temporary=temporary)
        self.message(f"Breakpoint {n} at {self._describe_bp(self.session.breakpoints[n])}")

    def _watch(self, arg: str, kind: str) -> None:
        words = arg.split()
        length = 8
        if "-l" in words:
            at = words.index("-l")
            length = int(words[at + 1], 0) if at + 1 < len(words) else 0
            del words[at:at + 2]
        where, pid, _cond, physical = self._split_options(" ".join(words))
        if not where:
            raise SessionError(f"{kind} needs an address")
        address = self._location(where)
        n = self._live().add_watchpoint(address, length, kind, pid=pid, physical=physical)
        self.message(f"Watchpoint {n}: {self._describe_bp(self.session.breakpoints[n])}")

    def do_watch(self, arg: str) -> None:
        """watch [-l LEN] [-phys] ADDRESS [pid N]: stop after an instruction writes there.

        LEN is in bytes (default 8); the stop comes after the writing instruction, with the
        value it wrote."""
        self._watch(arg, "write")

    def do_rwatch(self, arg: str) -> None:
        """rwatch [-l LEN] [-phys] ADDRESS [pid N]: stop after an instruction reads there."""
        self._watch(arg, "read")

    def do_awatch(self, arg: str) -> None:
        """awatch [-l LEN] [-phys] ADDRESS [pid N]: stop after any access there."""
        self._watch(arg, "access")

    def do_catch(self, arg: str) -> None:
        """catch KIND [FILTER]: stop at an event of the executive.

        KIND: exception [VECTOR|NAME], page-fault, syscall [NUMBER|NAME], ring [3->0|0->3],
        cr3 (address-space switch), interrupt, dpc, driver-load, process-create,
        process-exit, bugcheck."""
        words = arg.split()
        kinds = [k.value for k in CatchKind]
        if not words or words[0] not in kinds:
            raise SessionError(f"catch what? one of: {', '.join(kinds)}")
        filt = catch.check_filter(words[0], words[1] if len(words) > 1 else None)
        n = self._live().add_catchpoint(CatchKind(words[0]), filt)
        self.message(f"Catchpoint {n} ({self._describe_bp(self.session.breakpoints[n])})")

    def complete_catch(self, text: str, line: str, begidx: int, endidx: int) -> list[str]:
        """The catch kinds, then a kind's filters (service names, exception names)."""
        words = line[:begidx].split()
        if len(words) <= 1:
            return sorted(k.value for k in CatchKind if k.value.startswith(text))
        filters = {"syscall": [s.name for s in Service],
                   "exception": [v.name for v in Vector],
                   "ring": ["3->0", "0->3"]}.get(words[1], [])
        return sorted(f for f in filters if f.startswith(text))

    def _describe_bp(self, bp) -> str:
        if isinstance(bp, Breakpoint):
            text = f"{'physical ' if bp.physical else ''}{bp.address:#x}"
            if not bp.physical:
                text += f" <{self.target.symbolize(bp.address)}>"
            if bp.pid is not None:
                text += f" in process {bp.pid}"
            if bp.condition:
                text += f" if {bp.condition}"
            return text
        if isinstance(bp, Watchpoint):
            where = "physical " if bp.physical else ""
            scope = f" in process {bp.pid}" if bp.pid is not None else ""
            return f"{bp.kind} of {where}{bp.address:#x}..{bp.address + bp.length - 1:#x}{scope}"
        assert isinstance(bp, Catchpoint)
        if bp.filter and bp.kind is CatchKind.SYSCALL:
            return f"syscall {Service(int(bp.filter)).name}, {int(bp.filter):#x}"
        if bp.filter and bp.kind is CatchKind.EXCEPTION:
            return f"exception #{Vector(int(bp.filter)).name}, vector {int(bp.filter)}"
        return bp.kind.value + (f" {bp.filter}" if bp.filter else "")

    def do_delete(self, arg: str) -> None:
        """delete [N...]: delete breakpoints (all of them without a number)."""
        s = self._live()
        for n in _point_numbers(arg) or list(s.breakpoints):
            s.delete(n)

    def do_enable(self, arg: str) -> None:
        """enable N...: enable breakpoints."""
        for n in _point_numbers(arg):
            self._live().set_enabled(n, True)

    def do_disable(self, arg: str) -> None:
        """disable N...: disable breakpoints."""
        for n in _point_numbers(arg):
            self._live().set_enabled(n, False)

    info_subcommands = {**StateCommands.info_subcommands,
                        "breakpoints": lambda self, _arg: self._info_breakpoints(),
                        "snapshots": lambda self, _arg: self._info_snapshots()}

    def do_info(self, arg: str) -> None:
        """info SUBCOMMAND [ARGS]
        info breakpoints (or watchpoints): every breakpoint, watchpoint and catchpoint;
        info snapshots: the snapshots kept for going back; info registers [NAME...]: as
        `registers`; info cr: CR0, CR4 and EFER bit by bit; info gdt: every GDT descriptor
        decoded; info idt: the exception vectors and what the executive makes of each;
        info tss: the TSS (RSP0, IST, I/O map). A unique prefix is enough (info b)."""
        words = arg.split()
        if words and words[0] == "watchpoints":
            arg = "breakpoints"
        super().do_info(arg)

    def _info_breakpoints(self) -> None:
        s = self._live()
        if not s.breakpoints:
            self.message("No breakpoints, watchpoints or catchpoints.")
            return
        lines = ["Num  Type        Enb Hits What"]
        for n, bp in sorted(s.breakpoints.items()):
            kind = {Breakpoint: "breakpoint", Watchpoint: "watchpoint",
                    Catchpoint: "catchpoint"}[type(bp)]
            if getattr(bp, "temporary", False):
                kind = "tbreakpoint"
            lines.append(f"{n:<4} {kind:<11} {'y' if bp.enabled else 'n':<3} {bp.hits:<4} "
                         f"{self._describe_bp(bp)}")
        self.message("\n".join(lines))

    def _info_snapshots(self) -> None:
        ring = self._live().snapshots
        if ring is None:
            self.message("No snapshots: going back re-executes from boot (--snapshots 0).")
            return
        lines = [ring.describe()]
        for snap in ring.snapshots:
            kib = snap.private_kib()
            memory = f"{kib} KiB of its own" if kib is not None else "memory unknown"
            lines.append(f"  at position {snap.position:<12} {memory}")
        lines.append(f"  the next at position {ring.due_at()}")
        self.message("\n".join(lines))

    def do_position(self, arg: str) -> None:
        """position: steps since boot, each an instruction completed or an exception raised
        (where reverse execution counts from; a fault is a step of its own)."""
        no_argument("position", arg)
        n = self._live().position
        what = "instruction or exception" if n == 1 else "instructions and exceptions"
        self.message(f"{n} {what} since boot")

    def do_gdbserver(self, arg: str) -> None:
        """gdbserver [HOST:]PORT: let stock gdb attach (target remote HOST:PORT); when it
        detaches, this shell takes over again."""
        from emu.debugger import gdbstub
        if not arg.strip().rpartition(":")[2].strip().isdigit():
            raise SessionError("gdbserver needs a port, e.g. gdbserver 1234")
        try:
            host, port = gdbstub.parse_address(arg)    # a port beyond 65535: one line
            resumed = gdbstub.attach(self._live(), host, port,
                                     runner=self.run_command, log=self.stdout,
                                     stop=self.stop_info)
        except gdbstub.GdbServerError as err:
            raise SessionError(str(err)) from None
        if resumed:
            self.resumed = True


def _point_numbers(arg: str) -> list[int]:
    """The breakpoint numbers of ``delete``/``enable``/``disable`` (all checked before any
    is acted on): SessionError naming the first that is no number."""
    numbers = []
    for word in arg.split():
        try:
            numbers.append(int(word, 0))
        except ValueError:
            raise SessionError(f"bad breakpoint number '{word}' (see info breakpoints)") \
                from None
    return numbers


def _no_process(ring: int) -> str:
    """Who runs when no process's tables are loaded: kernel code at ring 0; at ring 3 the
    state a thread left when its process ended (its address space is gone)."""
    return "kernel" if ring == 0 else "no process: it has ended"
