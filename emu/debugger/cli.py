"""``emu debug``: the command line of the debugger shell.

    emu debug [options] APP [ARGS...] [-- APP2 [ARGS...]]...   a new machine, stopped at
                                                               APP's first instruction
    emu debug --dump FILE                                      a crash dump, post mortem
    emu debug -x FILE ...                                      commands from FILE (batch)

Commands are read from the terminal, or from standard input when it is not one; with -x
(or a pipe) the shell runs in batch mode: each command is echoed after its prompt, and the
machine is left where the script ends (with --stop-on-error: at the first command that
fails). Exit status: 0, or 1 when a command of a batch script failed; 2 for a bad option or
file.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable
from typing import TextIO

from emu.machine import Machine
from emu.outputs import discard_stdout, reader_safe_stdout

EXIT_COMMAND_FAILED = 1
DEFAULT_MEM = 64 << 20
DEFAULT_SNAPSHOTS = 8
DEFAULT_SNAPSHOT_INTERVAL = 1_000_000
# Each snapshot is a sleeping forked copy of the emulator (emu.debugger.snapshots): a host
# process that counts against RLIMIT_NPROC and holds the pages written after it was taken.
MAX_SNAPSHOTS = 64


def add_parser(sub, usage_error: type[Exception], size_type, count_type) -> None:
    """Add ``emu debug`` to the ``emu`` command's subparsers."""
    p = sub.add_parser("debug", help="debug guests in a shell that explains the machine",
                       description="Start a machine stopped before its first instruction and "
                       "step through it; or open a crash dump. `help` lists the commands.")
    p.add_argument("-x", dest="script", metavar="FILE", help="read commands from FILE "
                   "(batch mode: each command is echoed, output is deterministic)")
    p.add_argument("--stop-on-error", action="store_true", help="in batch mode, end at the "
                   "first command that fails (as gdb -batch does); exit status 1")
    p.add_argument("--dump", metavar="FILE", help="open a crash dump written by "
                   "`emu run --dump FILE` instead of starting a machine")
    p.add_argument("--stop-at-driver", action="store_true", help="stop before the first "
                   "driver's DriverEntry instead of the first app's entry point")
    p.add_argument("--mem", type=size_type, metavar="SIZE",
                   help="physical RAM (default 64M)")
    p.add_argument("--driver", action="append", default=[], metavar="PATH",
                   help="load a driver at boot (repeatable)")
    p.add_argument("--quantum", type=count_type, metavar="N", help="instructions per turn")
    p.add_argument("--fs", metavar="DIR", help="the guests' read-only file system")
    p.add_argument("--smap", action="store_true", help="turn on CR4.SMAP")
    p.add_argument("--no-pagefile", action="store_true", help="no pagefile")
    p.add_argument("--pagefile-size", type=size_type, metavar="SIZE", help="pagefile size")
    p.add_argument("--snapshots", type=int, metavar="N",
                   help="how many snapshots (forked copies of the emulator) to keep for "
                   "going back; 0: go back by re-executing from boot (default 8)")
    p.add_argument("--snapshot-interval", type=count_type, metavar="N",
                   help="instructions from a stop to the next snapshot; the spacing "
                   "doubles while the machine runs on, up to 16 times this (default 1000000)")
    p.add_argument("app", metavar="APP", nargs="?", help="path of the guest executable")
    p.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS",
                   help="its arguments; `-- APP2 ARGS...` starts another process")


def recipe(args: argparse.Namespace, commands: list[tuple[str, list[str]]],
           console) -> Callable[[], Machine]:
    """A function that builds the machine ``args`` describe, drivers loaded and apps spawned
    (the session calls it again to go back in time: the same recipe, the same machine)."""
    from emu.debugger.history import record_events
    from emu.nt.scheduler import DEFAULT_QUANTUM

    def build() -> Machine:
        machine = Machine(args.mem, console=console, quantum=args.quantum or DEFAULT_QUANTUM,
                          fs_root=args.fs, smap=args.smap,
                          pagefile_size=0 if args.no_pagefile else args.pagefile_size)
        try:
            record_events(machine)          # `history events`: from boot, drivers' loads too
            for path in args.driver:
                machine.add_driver(path)
            for app, app_args in commands:
                machine.spawn(app, app_args)
        except BaseException:
            machine.close()
            raise
        return machine
    return build


def run(args: argparse.Namespace, commands: list[tuple[str, list[str]]], usage_error) -> int:
    """Run ``emu debug``; returns the exit status. Once the reader of standard output has
    gone (`emu debug ... | head`), the session goes on with its output discarded, as `emu
    run`'s guest output is: a script's later commands still run, and the exit status is
    the session's own."""
    with reader_safe_stdout():
        return _run(args, commands, usage_error)


def _run(args: argparse.Namespace, commands: list[tuple[str, list[str]]], usage_error) -> int:
    from emu.debugger.shell import Shell

    problem = _option_problem(args)
    if problem:
        raise usage_error(problem)
    args.mem = DEFAULT_MEM if args.mem is None else args.mem
    args.snapshots = DEFAULT_SNAPSHOTS if args.snapshots is None else args.snapshots
    args.snapshot_interval = args.snapshot_interval or DEFAULT_SNAPSHOT_INTERVAL
    stdin, batch = _command_source(args, usage_error)
    if args.dump:
        from emu.debugger.target import TargetError, open_dump
        try:
            target = open_dump(args.dump)
        except TargetError as err:
            raise usage_error(str(err)) from None
        shell = Shell(target, stdin=stdin, batch=batch,
                      stop_on_error=batch and args.stop_on_error)
        bugcheck = target.bugcheck()
        what = f"bug check {bugcheck.code:#x}" if bugcheck is not None else "no bug check"
        shell.message(f"crash dump {args.dump}: {what} (try 'analyze')")
        shell.interact()
        return EXIT_COMMAND_FAILED if batch and shell.failures else 0
    if not commands:
        raise usage_error("missing APP (or --dump FILE)")
    return _debug_machine(args, commands, stdin, batch, usage_error)


# The options that shape a new machine: none applies when --dump opens a crash dump.
_MACHINE_OPTIONS = (("app", "APP"), ("mem", "--mem"), ("driver", "--driver"),
                    ("stop_at_driver", "--stop-at-driver"), ("quantum", "--quantum"),
                    ("fs", "--fs"), ("smap", "--smap"), ("no_pagefile", "--no-pagefile"),
                    ("pagefile_size", "--pagefile-size"), ("snapshots", "--snapshots"),
                    ("snapshot_interval", "--snapshot-interval"))


def _option_problem(args: argparse.Namespace) -> str | None:
    """One line if an option was given that means nothing with the others (it would be
    ignored), else None."""
    if args.dump:
        for name, option in _MACHINE_OPTIONS:
            if getattr(args, name) not in (None, False, []):
                return (f"--dump {args.dump} opens a crash dump and starts no machine: "
                        f"{option} does not apply")
        return None
    if args.fs is not None and not os.path.isdir(args.fs):
        return f"--fs {args.fs}: not a directory"
    if args.stop_at_driver and not args.driver:
        return "--stop-at-driver needs --driver (there is no driver to stop at)"
    if args.snapshots == 0 and args.snapshot_interval is not None:
        return "--snapshot-interval has no effect with --snapshots 0 (no snapshots are taken)"
    if args.snapshots is not None and args.snapshots < 0:
        return "--snapshots must not be negative"
    if args.no_pagefile and args.pagefile_size is not None:
        return "--no-pagefile cannot be combined with --pagefile-size"
    return None


def _debug_machine(args, commands, stdin: TextIO | None, batch: bool, usage_error) -> int:
    from emu.cli import EXIT_TERMINATED, TERMINATED, StopOnSignals, Terminated
    from emu.debugger.session import Session
    from emu.debugger.shell import Quit, Shell
    from emu.nt.loader import LoaderError
    from emu.nt.ps import LimitError

    if not 0 <= args.snapshots <= MAX_SNAPSHOTS:
        raise usage_error(f"--snapshots must be between 0 and {MAX_SNAPSHOTS} (each snapshot "
                          "is a sleeping process)")
    build = recipe(args, commands, _echo)
    try:
        machine = build()
    except (LoaderError, ValueError, LimitError) as err:
        raise usage_error(str(err)) from None
    from emu.debugger.snapshots import SnapshotRing

    ring = SnapshotRing(args.snapshot_interval, args.snapshots) if args.snapshots else None
    shell = Shell(None, stdin=stdin, batch=batch,   # type: ignore[arg-type]
                  stop_on_error=batch and args.stop_on_error)
    # Ctrl-C pauses a running guest at the next instruction boundary, by emu run's own
    # mechanism: the stop is repeated until the session has taken it (whatever the front
    # end, the shell's or gdb's while it lends the session).
    watcher = StopOnSignals({signal.SIGINT}, lambda: session.interrupt(),
                            wanted=lambda: session.stop_pending)
    session = Session(machine, shell.on_stop, factory=build,
                      stop_at_driver=args.stop_at_driver, snapshots=ring,
                      front_end_state=(shell.save_state, shell.load_state),
                      on_resume=watcher.start)
    shell.session = session
    shell.target = session.target
    terminated = False
    try:
        with watcher:
            session.run()
    except Quit:
        pass
    except Terminated:
        terminated = True
    finally:
        sys.stdout.flush()
        session.close()
    status = EXIT_COMMAND_FAILED if batch and shell.failures else 0
    if terminated:
        # Said here, before a resumed snapshot hands its status to the emulator that
        # waits (and exits with it): one line, from the process that ran the session.
        print(TERMINATED, file=sys.stderr)
        status = EXIT_TERMINATED
    if ring is not None:
        ring.finish(status)      # a resumed snapshot: the emulator that waits exits with this
    return status


def _command_source(args, usage_error) -> tuple[TextIO | None, bool]:
    if args.script:
        try:
            return open(args.script, encoding="utf-8"), True   # noqa: SIM115 - lives as long
        except OSError as err:
            raise usage_error(f"cannot read {args.script}: {err.strerror}") from None
    if not sys.stdin.isatty():
        return sys.stdin, True
    return None, False


def _echo(_proc, data: bytes) -> None:
    try:
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    except BrokenPipeError:        # `emu debug ... | head`: the session goes on, unheard
        discard_stdout()
