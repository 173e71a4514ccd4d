"""Ctrl-C in `emu debug` pauses a running guest every time, even one that switches threads
often (a stop landing between two runs of the CPU must not be lost)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SPIN = str(ROOT / "guest" / "build" / "apps" / "spin")
ROUNDS = 8


def test_ctrl_c_stops_two_spinning_processes_every_time():
    proc = subprocess.Popen([sys.executable, "-m", "emu", "debug", "--quantum", "7", SPIN,
                             "--", SPIN],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    lines: list[str] = []
    seen = threading.Condition()

    def collect() -> None:
        for line in proc.stdout:
            with seen:
                lines.append(line)
                seen.notify_all()

    def wait_for(text: str, start: int) -> int:
        """The index of the first line from ``start`` on that holds ``text``."""
        with seen:
            assert seen.wait_for(lambda: any(text in x for x in lines[start:]), timeout=60), \
                f"no {text!r} after line {start}: {lines[start:]}"
            return next(i for i in range(start, len(lines)) if text in lines[i])

    reader = threading.Thread(target=collect, daemon=True)
    reader.start()
    try:
        at = wait_for("spin!_start", 0) + 1
        for round in range(ROUNDS):
            proc.stdin.write("continue\n")
            proc.stdin.flush()
            at = wait_for(") continue", at)      # the shell has read it (batch mode echoes)
            # The guest runs (thousands of switches at quantum 7 in 50 ms), a little longer
            # each round so that the stops land at other points; not a timed assertion.
            time.sleep(0.05 + 0.0125 * round)
            os.kill(proc.pid, signal.SIGINT)
            at = wait_for("interrupted (Ctrl-C)", at)
            assert wait_for("spin!main", at) == at + 1, lines[at:]   # ... and where
            at += 2
        proc.stdin.write("kill\n")
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        reader.join(timeout=10)
    assert sum("interrupted (Ctrl-C)" in x for x in lines) == ROUNDS


def _sigterm_debug(script: str, *args: str, to_group: bool) -> tuple[int, str]:
    """``emu debug ARGS`` reading ``script``, then (once its last line is echoed and the
    machine runs on) SIGTERM to emu alone or to its process group, as ``timeout`` sends it:
    the exit status and stderr."""
    proc = subprocess.Popen([sys.executable, "-m", "emu", "debug", *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            start_new_session=True)
    try:
        last = script.splitlines()[-1]
        proc.stdin.write(script)
        proc.stdin.flush()                  # stdin stays open: the shell waits for more
        for line in proc.stdout:
            if line.rstrip().endswith(f") {last}"):
                break
        time.sleep(0.5)
        if to_group:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        return proc.returncode, err
    finally:
        proc.kill()
        proc.wait()


def test_sigterm_ends_emu_debug_with_one_line_whatever_snapshot_runs_the_session():
    """Sleeping snapshots die silently, and one that took the session over (after ``rsi``)
    says it for the emulator that waits for it, which exits with its status: one line,
    143, whether the signal reaches the whole process group or the emulator alone."""
    script = "si 3000000\nrsi 10\ncontinue\n"
    for to_group in (True, False):
        status, err = _sigterm_debug(script, "--snapshot-interval", "100000", SPIN,
                                     to_group=to_group)
        assert (status, err) == (143, "emu: terminated by SIGTERM\n"), to_group
    status, err = _sigterm_debug("continue\n", SPIN, to_group=True)   # none resumed
    assert (status, err) == (143, "emu: terminated by SIGTERM\n")


def test_sigterm_while_gdbserver_waits_for_gdb_ends_emu_debug():
    """Not a failing command ("internal error") after which the script goes on."""
    status, err = _sigterm_debug("gdbserver 127.0.0.1:0\n", SPIN, to_group=False)
    assert (status, err) == (143, "emu: terminated by SIGTERM\n")
