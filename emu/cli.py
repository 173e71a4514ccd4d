"""The ``emu`` command line.

    emu run [--mem 64M] [--max-insns N] [--quantum N] [--trace] [--trace-file F]
            [--report F] [--events F] [--html F] [--fs DIR] APP [ARGS...] [-- APP2 [ARGS...]]...

Exit status of ``emu run``, decided by the FIRST app named: its exit code (0-255) when it
exits normally;
EXIT_EXCEPTION when it is terminated by an exception; EXIT_BUGCHECK when the
system stops with a bug check; EXIT_LIMIT when the instruction budget runs
out; EXIT_DEADLOCK when every thread waits forever; EXIT_INTERRUPTED (Ctrl-C) or
EXIT_TERMINATED (SIGTERM) when a signal stops the machine; EXIT_USAGE for a bad option, a
missing file or an image the loader refuses. Every process's fate is printed on stderr.
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import TextIO

import unicorn

from emu import __version__, guests
from emu.fmt import addr, exception_line, status
from emu.hw.memory import parse_size
from emu.machine import Machine, MachineResult
from emu.nt.bugcheck import blue_screen
from emu.nt.loader import LoaderError
from emu.nt.mm.pagefile import MAX_PAGEFILE_SIZE, MIN_PAGEFILE_SIZE, TOO_LARGE, refuse_images
from emu.nt.mm.pfn import OutOfFrames
from emu.nt.process import Process
from emu.nt.ps import LimitError
from emu.nt.scheduler import DEFAULT_QUANTUM
from emu.outputs import discard_stdout, output_problem, reader_safe_stdout, same_file_problem

EXIT_USAGE = 2
APP_SEPARATOR = "\0--"      # what `--` becomes on an `emu run` command line
EXIT_DEADLOCK = 123
EXIT_LIMIT = 124
EXIT_EXCEPTION = 125
EXIT_BUGCHECK = 126
EXIT_INTERRUPTED = 130    # as a shell reports a command ended by SIGINT
EXIT_TERMINATED = 143     # ... and by SIGTERM (128 + 15)
TERMINATED = "emu: terminated by SIGTERM"   # what emu says then, when no guest ran


class UsageError(Exception):
    """A mistake on the command line: one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:   # one line, not argparse's usage dump
        raise UsageError(message)


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _count(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    if value >= 1 << 64:
        # Budgets are 64-bit counters (emu/hw/native.c), as QEMU's icount is.
        raise argparse.ArgumentTypeError("must be below 2^64")
    return value


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``emu`` parser, every command in it; with ``command`` (a name of _COMMANDS), that
    command alone: a command line that starts with its name is parsed by its subparser only,
    so the other commands' modules are neither imported nor their parsers built (start-up,
    docs/performance.md)."""
    parser = _Parser(prog="emu", description="A teaching-grade x86-64 machine: guest code on "
                     "Unicorn, paging and rings in Python, an NT-like executive.")
    parser.add_argument("--version", action="version",
                        version=f"emu {__version__} (unicorn {unicorn.__version__})")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, add in _COMMANDS.items():
        if command is None or name == command:
            add(sub)
    return parser


def _add_run(sub) -> None:
    run = sub.add_parser("run", help="run a guest app at ring 3",
                         description="Run a static ELF64 guest app in its own address space.")
    run.add_argument("--mem", type=_size, default=parse_size("64M"), metavar="SIZE",
                     help="physical RAM, with a K, M or G suffix (default 64M)")
    run.add_argument("--max-insns", type=_count, metavar="N",
                     help="stop the machine after N instructions (counting costs speed)")
    run.add_argument("--trace", action="store_true",
                     help="print every instruction executed (ring, pid, RIP, bytes, disassembly) "
                     "to standard error")
    run.add_argument("--trace-file", metavar="FILE", help="write the trace to FILE instead")
    run.add_argument("--report", metavar="FILE", help="write a JSON report (docs/report.md)")
    run.add_argument("--events", metavar="FILE", help="write the executive's events as JSON "
                     "Lines, one a line with its position (docs/report.md, \"The event log\")")
    run.add_argument("--html", metavar="FILE", help="write a steppable page of the run's "
                     "events into FILE (docs/report.md, \"Steppable pages\")")
    run.add_argument("--driver", action="append", default=[], metavar="PATH",
                     help="load a driver (a PE32+ .sys: docs/drivers.md) at boot; its "
                     "DriverEntry runs at ring 0 before the apps start (repeatable)")
    run.add_argument("--dump", metavar="FILE", help="on a bug check, write a crash dump "
                     "(RAM, CPU and executive state) to FILE")
    run.add_argument("--smap", action="store_true",
                     help="turn on CR4.SMAP: ring 0 may touch user memory only through the "
                     "probe/copy routines (Windows leaves SMAP off)")
    run.add_argument("--map", action="store_true",
                     help="after the run, print each process's address-space map (regions, "
                     "protections, frames) to standard error")
    run.add_argument("--map-svg", metavar="FILE", help="draw the address spaces (virtual "
                     "pages -> physical frames) as an SVG picture into FILE; implies --map")
    run.add_argument("--pagefile", metavar="PATH", help="the host file evicted pages are "
                     "written to (default: a temporary file, deleted at exit)")
    run.add_argument("--pagefile-size", type=_size, metavar="SIZE",
                     help="pagefile size (default: as large as --mem, at least 64M); the "
                     "commit limit is RAM + pagefile")
    run.add_argument("--no-pagefile", action="store_true",
                     help="no pagefile: nothing is paged out, commit is limited by RAM")
    run.add_argument("--quantum", type=_count, default=DEFAULT_QUANTUM, metavar="N",
                     help=f"instructions per turn when threads share the CPU "
                     f"(default {DEFAULT_QUANTUM})")
    run.add_argument("--fs", metavar="DIR", help="folder the guests see as their read-only "
                     "file system (default: the built guest apps)")
    run.add_argument("--gdb", metavar="[HOST:]PORT", help="wait for stock gdb to attach "
                     "(target remote HOST:PORT) before the first instruction; HOST: a "
                     "loopback address, 127.0.0.1 unless given")
    run.add_argument("app", metavar="APP", help="path of the guest executable")
    run.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS",
                     help="arguments passed to the app; `-- APP2 ARGS...` starts another "
                     "process in the same machine (as many as you like)")


def _add_debug(sub) -> None:
    from emu.debugger import cli as debug_cli
    debug_cli.add_parser(sub, UsageError, _size, _count)


def _add_query(sub) -> None:
    from emu.debugger import querycli
    querycli.add_parser(sub)


def _add_scenario(sub) -> None:
    from emu.scenarios import cli as scenario_cli
    scenario_cli.add_parser(sub)


def _add_build_driver(sub) -> None:
    from emu.tools import build_driver
    build_driver.add_parser(sub)


def _add_build(sub) -> None:
    from emu import build
    build.add_parser(sub)


def _add_exercise(sub) -> None:
    from emu.exercise import cli as exercise_cli
    exercise_cli.add_parser(sub)


# Every command, in the order `emu --help` lists them, and what adds its subparser.
_COMMANDS: dict[str, Callable[[argparse._SubParsersAction], None]] = {
    "run": _add_run, "debug": _add_debug, "query": _add_query, "scenario": _add_scenario,
    "build-driver": _add_build_driver, "build": _add_build, "exercise": _add_exercise}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``emu`` console script."""
    if argv is None:
        # The process's own command line: what importing made (modules, classes, tables)
        # lives until the process ends, so no collection need walk it again, not even the
        # ones at exit (gc.freeze; start-up, docs/performance.md).
        gc.freeze()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["exercise"]:        # its own grammar: options among an answer's words
        from emu.exercise import cli as exercise_cli
        return exercise_cli.run(argv[1:])
    command = next((w for w in argv if w in ("run", "debug", "query")), None)
    if command is not None:
        # argparse would swallow a `--` right after APP; keep every one as a separator.
        at = argv.index(command)
        argv[at + 1:] = [APP_SEPARATOR if w == "--" else w for w in argv[at + 1:]]
    on_main_thread = threading.current_thread() is threading.main_thread()
    old_term = signal.signal(signal.SIGTERM, _raise_terminated) if on_main_thread else None
    try:
        # `emu run APP`: only `run`'s parser (any other first word: every command's, so
        # that --help, --version and a mistyped command read as before).
        args = build_parser(argv[0] if argv[:1] and argv[0] in _COMMANDS else None) \
            .parse_args(argv)
        if args.command is None:
            raise UsageError("missing command (try: emu run APP, or emu --help)")
        if args.command in ("run", "debug"):        # --driver NAME: a built driver
            args.driver = [guests.driver_path(d) for d in args.driver]
        if args.command == "debug":
            from emu.debugger import cli as debug_cli
            apps = split_commands([args.app, *args.args]) if args.app else []
            return debug_cli.run(args, apps, UsageError)
        if args.command == "query":
            from emu.debugger import querycli
            with reader_safe_stdout():          # `emu query ... | head`: no traceback
                return querycli.run(args, UsageError, _size, _count, split_commands)
        if args.command == "build":
            from emu import build
            return build.run(args)
        if args.command == "build-driver":
            from emu.tools import build_driver
            return build_driver.run(args)
        if args.command == "scenario":
            from emu.scenarios import cli as scenario_cli
            return scenario_cli.run(args)
        return _run(args)
    except UsageError as err:
        print(f"emu: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("emu: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated:
        print(TERMINATED, file=sys.stderr)
        return EXIT_TERMINATED
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, old_term)


class Terminated(BaseException):
    """SIGTERM arrived while no guest was running (loading, writing the outputs, waiting
    for gdb). Not an Exception, as KeyboardInterrupt is not: a handler of errors (the
    debugger's, for a command that fails) must not take it for one and go on."""


def _raise_terminated(_signum, _frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)   # once: emu is on its way out
    raise Terminated


def _check_outputs(args: argparse.Namespace) -> None:
    """Every output file of ``emu run``, checked before the machine starts (UsageError)."""
    outputs = [("--trace-file", args.trace_file), ("--report", args.report),
               ("--dump", args.dump), ("--map-svg", args.map_svg), ("--events", args.events),
               ("--html", args.html)]
    for option, path in outputs:
        problem = path is not None and output_problem(option, path)
        if problem:
            raise UsageError(problem)
    problem = same_file_problem(outputs)
    if problem:
        raise UsageError(problem)


class OutputError(Exception):
    """An output file that could not be written after the run: one line, the run's own
    exit status stays."""


def _run(args: argparse.Namespace) -> int:
    _check_outputs(args)
    if args.gdb is not None:            # before the machine is made (--gdb '' included)
        from emu.debugger import rsp
        try:
            rsp.check_host(rsp.parse_address(args.gdb)[0])
        except rsp.GdbServerError as err:
            raise UsageError(str(err)) from None
    trace: TextIO | None = None
    try:
        if args.trace_file:
            trace = open(args.trace_file, "w")  # noqa: SIM115 - closed below
        elif args.trace:
            trace = sys.stderr
    except OSError as err:
        raise UsageError(f"cannot write trace file {args.trace_file}: {err.strerror}") from None
    if args.html and args.gdb:
        # Going back under gdb re-executes from boot: one page of one run is not defined.
        raise UsageError("--html cannot be combined with --gdb")
    if args.fs is not None and not os.path.isdir(args.fs):
        raise UsageError(f"--fs {args.fs}: not a directory")
    if args.no_pagefile and (args.pagefile or args.pagefile_size is not None):
        raise UsageError("--no-pagefile cannot be combined with --pagefile or --pagefile-size")
    if args.pagefile_size is not None and args.pagefile_size < MIN_PAGEFILE_SIZE:
        raise UsageError(f"--pagefile-size {args.pagefile_size}: a pagefile must be at least "
                         f"{MIN_PAGEFILE_SIZE // 1024}K (its first page is reserved); "
                         "--no-pagefile runs without one")
    if args.pagefile_size is not None and args.pagefile_size > MAX_PAGEFILE_SIZE:
        raise UsageError(f"--pagefile-size {args.pagefile_size}: {TOO_LARGE}")
    if args.pagefile:
        try:
            refuse_images(args.pagefile, [*args.driver, *(app for app, _ in
                                                         split_commands([args.app, *args.args]))])
        except ValueError as err:
            raise UsageError(str(err)) from None
    # Under --gdb going back re-executes the machine from boot (gdbstub.serve's factory):
    # each output the user sees is then passed on once, the first time its position is
    # reached, so it is the output of one run from boot (_FirstTime).
    once = _FirstTime() if args.gdb else None
    events = None
    build = None
    try:
        if args.events:
            events = _open_event_log(args.events)
        build = _recipe(args, trace, events, once)
        return _run_machine(args, build, trace, once)
    except UsageError:
        if events is not None:      # refused before the run (an image the loader refuses):
            events.stream.close()   # no log of a run that never was (a device stays)
            if os.path.isfile(args.events):
                os.unlink(args.events)
        raise
    finally:
        if build is not None and build.made is not None:
            build.made.machine.close()
        if events is not None and not events.stream.closed:
            _close_event_log(args.events, events)


class _Made:
    """One machine of an ``emu run``: its processes in command-line order, its map recorder."""

    def __init__(self, machine: Machine, procs: list[Process], recorder) -> None:
        self.machine, self.procs, self.recorder = machine, procs, recorder
        self.steps = None        # --html: its emu.stepsrecord.StepRecorder


class _FirstTime:
    """``emu run --gdb``'s outputs (console, --trace-file, --events), fed by every machine
    the run makes: going back re-executes from boot, and what a re-execution repeats was
    written already. Each output is keyed by (position, its rank at that position) and
    passed on only past the furthest key passed so far; the result is what one run from
    boot to the furthest point reached writes (the debugger's position is deterministic:
    emu.debugger.session)."""

    def __init__(self) -> None:
        self.session = None                       # emu.debugger.session.Session, once made
        self.stops = 0                            # the session's stops so far
        self._marks: dict[str, tuple[int, int]] = {}

    def watch(self, session) -> None:
        """Follow ``session`` (its position, its stops)."""
        self.session = session
        on_stop = session.on_stop

        def counted(stop):
            self.stops += 1
            return on_stop(stop)
        session.on_stop = counted

    def gate(self, output: str, made: list[Machine], sink: Callable) -> Callable:
        """``sink``, passed on only the first time; ``made`` holds the machine it serves."""
        last: list = [-1, 0, self.stops, None]      # position, rank, stops, what was written

        def forward(*args):
            session = self.session
            # Before the session has the machine (loading drivers, apps): position 0.
            at = session.position if session is not None and made and \
                session.machine is made[0] else 0
            if at == last[0] and self.stops != last[2] and args == last[3]:
                # A stop came before the instruction last traced had run (a breakpoint):
                # resumed, it is traced again. It runs once: write it once.
                last[2] = self.stops
                return None
            last[:] = [at, last[1] + 1 if last[0] == at else 0, self.stops, args]
            if (at, last[1]) <= self._marks.get(output, (-1, 0)):
                return None
            self._marks[output] = (at, last[1])
            return sink(*args)
        return forward


class _TraceOnce:
    """The --trace-file stream a machine writes to under --gdb (see _FirstTime)."""

    def __init__(self, write: Callable[[str], object]) -> None:
        self.write = write


def _recipe(args: argparse.Namespace, trace: TextIO | None, events,
            once: _FirstTime | None) -> Callable[[], Machine]:
    """The function that makes the machine ``args`` describe, drivers loaded and apps
    spawned; called again (``--gdb``) to go back, it makes the same machine. ``made`` is
    the latest one."""
    commands = split_commands([args.app, *args.args])

    def build() -> Machine:
        made: list[Machine] = []
        console, out = _echo, trace
        if once is not None:
            console = once.gate("console", made, _echo)
            if trace is not None:
                out = _TraceOnce(once.gate("trace", made, trace.write))  # type: ignore[assignment]
        try:
            machine = Machine(args.mem, max_insns=args.max_insns, trace=out, console=console,
                              quantum=args.quantum, fs_root=args.fs, smap=args.smap,
                              pagefile=args.pagefile,
                              pagefile_size=0 if args.no_pagefile else args.pagefile_size)
        except ValueError as err:
            raise UsageError(str(err)) from None
        made.append(machine)
        build.made = _Made(machine, [], None)
        if events is not None:
            from emu.eventlog import EventLog
            EventLog.attach(machine, once.gate("events", made, events) if once else events)
        if args.html:
            from emu.stepsrecord import StepRecorder
            build.made.steps = StepRecorder.attach(machine)
        if args.gdb:                       # gdb's `monitor history events`
            from emu.debugger.history import record_events
            record_events(machine)
        for path in args.driver:
            try:
                machine.add_driver(path)
            except LoaderError as err:
                raise UsageError(str(err)) from None
        build.made.procs = [_spawn(machine, app, app_args, args.mem)
                            for app, app_args in commands]
        if args.map or args.map_svg:
            from emu.viz.addrmap import MapRecorder  # only when asked: keeps start-up quick
            build.made.recorder = MapRecorder(machine)
        return machine

    build.made = None               # type: ignore[attr-defined]
    return build


def _open_event_log(path: str):
    """``--events FILE``: the event log's writer (emu.eventlog), attached by the recipe
    before drivers and apps are added so that their loads are logged."""
    from emu.eventlog import JsonLinesWriter

    try:
        stream = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed by the caller
    except OSError as err:
        raise UsageError(f"--events {path}: cannot write there: {err.strerror}") from None
    return JsonLinesWriter(stream)


def _close_event_log(path: str, writer) -> None:
    try:
        writer.stream.close()
    except OSError as err:
        writer.error = writer.error or err
    if writer.error is not None:
        _output_failed(f"cannot write event log {path}: {writer.error.strerror} "
                       "(the log is incomplete)")


def _run_machine(args: argparse.Namespace, build, trace: TextIO | None,
                 once: _FirstTime | None) -> int:
    trace_error = None
    try:
        machine = build()
        # Under --gdb the main thread waits in Python (for gdb, for packets): SIGTERM's
        # handler runs there, so only SIGINT is left to the watcher.
        signals = {signal.SIGINT} if args.gdb else _STOP_SIGNALS
        # (the machine of the moment: going back makes another)
        with StopOnSignals(signals, lambda: build.made.machine.interrupt(),
                           once=True) as watcher:
            result = _run_under_gdb(args.gdb, machine, build, once) if args.gdb \
                else machine.run()
        caught = watcher.caught
    finally:
        sys.stdout.flush()
        if build.made is not None:
            trace_error = build.made.machine.trace_error
        if trace is not None and trace is not sys.stderr:
            try:
                trace.close()
            except OSError as err:      # the last buffered lines could not be written
                trace_error = trace_error or err
    # The machine that ran last: under --gdb, going back made it again (the same one).
    made = build.made
    machine, proc, recorder = made.machine, made.procs[0], made.recorder
    # Writing an output may still fail (a full disk): say so in one line, and keep the run's
    # own result (its blue screen, its exit status).
    if trace_error is not None and args.trace_file:
        _output_failed(f"cannot write trace file {args.trace_file}: {trace_error.strerror} "
                       "(the trace is incomplete)")
    if args.report:
        _write_output(_write_report, args.report, result, machine)
    if args.dump and result.bugcheck is not None:
        _write_output(_write_dump, args.dump, machine)
    elif args.dump:
        print(f"emu: no bug check: no crash dump written to {args.dump}", file=sys.stderr)
    if recorder is not None:
        _write_output(_write_map, args.map_svg, recorder)
    if made.steps is not None:
        _write_output(_write_steps, args.html, made.steps, [args.app, *args.args])
    return _summarize(proc, result, caught[0] if caught else signal.SIGINT)


def _write_output(write, *args) -> None:
    try:
        write(*args)
    except OutputError as err:
        _output_failed(str(err))


def _output_failed(message: str) -> None:
    print(f"emu: error: {message}", file=sys.stderr)


def _write_dump(path: str, machine: Machine) -> None:
    from emu.nt import dump

    try:
        dump.write(machine.executive, path)
    except OSError as err:
        raise OutputError(f"cannot write crash dump {path}: {err.strerror}") from None
    print(f"emu: crash dump written to {path}", file=sys.stderr)


def _write_steps(path: str, steps, words: list[str]) -> None:
    """``--html FILE``: the steppable page of the run (emu.viz.steps), and what it weighs."""
    from emu.viz import steps as steps_page

    # The command line as typed, each app by its file's name (`--` between apps as typed).
    title = "emu run " + " ".join(
        "--" if w == APP_SEPARATOR else
        os.path.basename(w) if i == 0 or words[i - 1] == APP_SEPARATOR else w
        for i, w in enumerate(words))
    text = steps_page.page(steps.steps, steps.left_out, title)
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as err:
        raise OutputError(f"cannot write steppable page {path}: {err.strerror}") from None
    size = len(text.encode("utf-8"))
    kept = steps_page.fitting(steps.steps)          # the steps the page holds
    left_out = steps.left_out + len(steps.steps) - kept
    left = f", {left_out:,} events left out" if left_out else ""
    print(f"emu: steppable page written to {path}: {kept:,} steps{left}, {size:,} bytes",
          file=sys.stderr)


def _run_under_gdb(address: str, machine: Machine, build: Callable[[], Machine],
                   once: _FirstTime | None) -> MachineResult:
    """``--gdb``: wait for stock gdb, then run the machine under it (emu.debugger.gdbstub);
    ``build`` makes the same machine again for gdb's reverse-stepi and reverse-continue."""
    from emu.debugger import gdbstub
    from emu.debugger.shell import Shell
    from emu.debugger.target import LiveTarget

    shell = Shell(LiveTarget(machine))          # gdb's `monitor CMD` runs its commands
    try:
        host, port = gdbstub.parse_address(address)
        def on_session(session) -> None:
            shell.session = session
            if once is not None:
                once.watch(session)

        def monitor(line: str) -> str:
            # The machine of the moment: going back made a new one (the shell's own
            # on_stop, which follows the session, is not called while gdb has it).
            shell.target = shell.session.target
            return shell.run_command(line)

        def again() -> Machine:
            try:
                return build()
            except UsageError as err:   # a file changed under the run: the machine is gone
                raise UsageError(f"cannot go back: the machine could not be made again: "
                                 f"{err}") from None

        return gdbstub.serve(machine, host, port, log=sys.stderr, runner=monitor,
                             factory=again, on_session=on_session)
    except gdbstub.GdbServerError as err:
        raise UsageError(str(err)) from None


def split_commands(words: list[str]) -> list[tuple[str, list[str]]]:
    """``APP ARGS -- APP2 ARGS2 ...`` -> [(APP, ARGS), (APP2, ARGS2), ...]."""
    commands: list[list[str]] = [[]]
    for word in words:
        if word in (APP_SEPARATOR, "--"):
            commands.append([])
        else:
            commands[-1].append(word)
    if any(not c for c in commands):
        raise UsageError("missing APP after `--`" if len(commands) > 1 else "missing APP")
    # A bare name (no "/") that is no file here names a built guest app (emu.guests).
    return [(guests.app_path(c[0]), c[1:]) for c in commands]


def _spawn(machine: Machine, app: str, app_args: list[str], mem: int) -> Process:
    try:
        return machine.spawn(app, app_args)
    except (LoaderError, ValueError, LimitError) as err:
        raise UsageError(str(err)) from None
    except OutOfFrames:
        raise UsageError(f"{app}: does not fit in {mem // 1024} KiB of RAM "
                         "(try a larger --mem)") from None


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


class StopOnSignals:
    """Make ``signals`` (Ctrl-C's SIGINT, SIGTERM) call ``stop``: the one mechanism of `emu
    run` and `emu debug`; ``caught`` receives each signal taken.

    At full speed the guest runs inside Unicorn with no Python hook, so a Python signal
    handler would never get to run. Instead the signals are blocked in the main thread and
    a watcher thread takes them with sigwait() (ctypes releases the GIL during emu_start).
    After a signal it calls ``stop`` again every 50 ms while ``wanted()`` holds (the
    debugger: until the session has paused) and the ``with`` block runs (`emu run`: until
    the run returns): a stop that lands between two runs of the CPU (a context switch)
    would otherwise be lost to the next one. With ``once`` the watcher ends after the first
    signal.
    """

    REPEAT = 0.05        # seconds between two stops

    def __init__(self, signals: set[int], stop: Callable[[], None], *,
                 wanted: Callable[[], bool] = lambda: True, once: bool = False) -> None:
        self.signals, self.stop, self.wanted, self.once = signals, stop, wanted, once
        self.caught: list[int] = []
        self._done = threading.Event()
        self._lock = threading.Lock()        # no stop once the ``with`` block has ended
        self._mask: set[int] | None = None

    def start(self) -> None:
        """Start the watcher (again after a fork: threads do not survive it, and a lock the
        old watcher held would stay held, so both are made anew)."""
        self._done, self._lock = threading.Event(), threading.Lock()
        threading.Thread(target=self._watch, name="ctrl-c", daemon=True).start()

    def _watch(self) -> None:
        while True:
            self.caught.append(signal.sigwait(self.signals))
            self._stop()
            while not self._done.wait(self.REPEAT) and self.wanted():
                self._stop()
            if self._done.is_set() or self.once:
                return

    def _stop(self) -> None:
        with self._lock:
            if not self._done.is_set():      # the machine may be closed by now
                self.stop()

    def __enter__(self) -> StopOnSignals:
        if threading.current_thread() is threading.main_thread():
            self._mask = signal.pthread_sigmask(signal.SIG_BLOCK, self.signals)
            self.start()
        else:                        # only the main thread is sent the signals
            self._mask = None
        return self

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            self._done.set()
        if self._mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, self._mask)


def _write_map(svg_path: str | None, recorder) -> None:
    """The address-space map of every process: text to stderr, the picture to ``svg_path``."""
    from emu.viz.addrmap import render_svg, render_text

    maps = recorder.finish()
    sys.stderr.write(render_text(maps))
    if svg_path:
        try:
            with open(svg_path, "w", encoding="utf-8") as f:
                f.write(render_svg(maps))
        except OSError as err:
            raise OutputError(f"cannot write map {svg_path}: {err.strerror}") from None


def _echo(_proc: Process, data: bytes) -> None:
    try:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    except BrokenPipeError:             # `emu run APP | head`: the reader is gone; the run
        discard_stdout()                # goes on, its output discarded


def _write_report(path: str, result: MachineResult, machine: Machine) -> None:
    import json

    from emu.report import build_report

    try:
        with open(path, "w") as f:
            json.dump(build_report(result, machine.mem.size), f, indent=2)
            f.write("\n")
    except OSError as err:
        raise OutputError(f"cannot write report {path}: {err.strerror}") from None


def _summarize(proc: Process, result: MachineResult, stop_signal: int = signal.SIGINT) -> int:
    """Print how the run ended (stderr) and choose the exit status; ``stop_signal``: the
    signal that interrupted the machine (SIGINT or SIGTERM), if it was interrupted."""
    for d in result.drivers:
        if d.unloaded:
            print(f"driver {d.image.name}: DriverEntry returned {status(d.status)}; unloaded",
                  file=sys.stderr)
    for p in result.processes:
        if p.exception is not None:
            print(exception_line(p, p.exception), file=sys.stderr)
    if result.bugcheck is not None:
        print(blue_screen(result.bugcheck), file=sys.stderr)
        return EXIT_BUGCHECK
    if result.stopped == "deadlock":
        where = ", ".join(f'process {p.pid} "{p.name}"' for p in result.unfinished)
        print(f"emu: every thread is waiting and nothing can wake one (deadlock): {where}",
              file=sys.stderr)
        return EXIT_DEADLOCK
    if result.stopped == "interrupted" and stop_signal == signal.SIGTERM:
        print(f"emu: terminated by SIGTERM at rip {addr(result.last_rip)}", file=sys.stderr)
        return EXIT_TERMINATED
    if result.stopped == "interrupted":
        print(f"emu: interrupted at rip {addr(result.last_rip)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if result.stopped == "instruction limit":
        where = ", ".join(f'process {p.pid} "{p.name}"' for p in result.unfinished)
        print(f"emu: stopped after {result.stats.instructions} instructions (--max-insns); "
              f"still running: {where or 'nothing'}, at rip {addr(result.last_rip)}",
              file=sys.stderr)
        return EXIT_LIMIT
    if proc.exception is not None:
        return EXIT_EXCEPTION
    return (proc.exit_status or 0) & 0xFF

