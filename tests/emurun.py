"""``python -m emu ARGS`` as a command, run in a fork of the test process.

A subprocess starts Python and imports emu, Unicorn and Capstone again for every run: about
0.2 s of CPU, most of a short run's cost, paid by every command-line test. A fork of the
test process has them imported already (about 0.03 s of CPU a run) and is still a process
of its own: its own file descriptors 0-2 (stdin from ``input``, stdout and stderr captured),
working folder, ``sys.argv``, exit status, signals and memory, so nothing it does reaches
the test process. It runs emu/__main__.py as ``python -m emu`` does.

What a fork does not give: a fresh interpreter (a hash seed of its own, modules imported
anew, environment variables read at import) and the interpreter's own exit path (atexit,
waiting for threads, flushing stdout into a closed pipe). A test about those, about two
runs being alike in two processes, or that passes an environment, runs a subprocess.
"""

from __future__ import annotations

import gc
import io
import os
import runpy
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path


def _be_emu(argv: list[str], fds: tuple[int, int, int], cwd: Path | str | None) -> int:
    """In the forked child: become ``python -m emu ARGV``; its exit status."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))      # as subprocess's close_fds=True
    # New streams over descriptors 0-2, as Python makes them (stderr line-buffered).
    sys.stdin = sys.__stdin__ = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
    sys.stdout = sys.__stdout__ = io.TextIOWrapper(io.FileIO(1, "w", closefd=False))
    sys.stderr = sys.__stderr__ = io.TextIOWrapper(io.FileIO(2, "w", closefd=False),
                                                   errors="backslashreplace",
                                                   line_buffering=True)
    signal.signal(signal.SIGINT, signal.default_int_handler)   # Python's own at start-up
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if cwd is not None:
        os.chdir(cwd)
    sys.argv = [str(Path(__file__).resolve().parents[1] / "emu" / "__main__.py"), *argv]
    try:
        runpy.run_module("emu", run_name="__main__", alter_sys=True)
        status = 0
    except SystemExit as stop:                      # as the interpreter reads sys.exit()
        if stop.code is None or isinstance(stop.code, int):
            status = (stop.code or 0) & 0xFF
        else:
            print(stop.code, file=sys.stderr)
            status = 1
    except BaseException:                           # as the interpreter: the traceback, 1
        traceback.print_exc()
        status = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:
            status = 120                            # what Python exits with then
    return status


def emu(*argv, input: str | None = None, cwd: Path | str | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess:
    """What ``subprocess.run([sys.executable, "-m", "emu", *argv], capture_output=True,
    text=True, input=input, cwd=cwd, timeout=timeout)`` returns, run in a fork."""
    args = [str(a) for a in argv]
    with tempfile.TemporaryFile() as given, tempfile.TemporaryFile() as out, \
            tempfile.TemporaryFile() as err:
        given.write((input or "").encode())
        given.seek(0)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        gc.freeze()             # the child's collections leave the parent's pages shared
        try:
            pid = os.fork()
            if pid == 0:
                status = 1
                try:
                    status = _be_emu(args, (given.fileno(), out.fileno(), err.fileno()), cwd)
                finally:
                    os._exit(status)
        finally:
            gc.unfreeze()
        deadline = time.monotonic() + timeout
        while not (done := os.waitpid(pid, os.WNOHANG))[0]:
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise subprocess.TimeoutExpired([sys.executable, "-m", "emu", *args], timeout)
            time.sleep(0.001)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess([sys.executable, "-m", "emu", *args],
                                           os.waitstatus_to_exitcode(done[1]),
                                           out.read().decode(), err.read().decode())
