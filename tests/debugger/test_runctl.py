"""Run control as a user sees it in ``emu debug``: where a stop is, what it prints, and that
one position names one machine state however it is reached (issue 16)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
APPS = ROOT / "guest" / "build" / "apps"
DRIVERS = APPS.parent / "drivers"
BADREAD_LINE = ('process 4 "badread" terminated: STATUS_ACCESS_VIOLATION (0xC0000005) '
                "reading 0xffff800000001000 at rip 0x401022: mov rax, qword ptr [rbx]")


def debug(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "emu", "debug", *args], input=script,
                          capture_output=True, text=True, timeout=180, cwd=ROOT)


def after(out: str, command: str) -> str:
    """What the transcript printed for the first echoed ``command``."""
    tail = out.split(f") {command}\n", 1)[1]
    return tail.split("\n(emu", 1)[0]


# -- an unhandled exception stops in the faulting process (item 6) -------------------------

def test_unhandled_exception_stops_in_the_process_with_emu_runs_line():
    r = debug("continue\nregisters rip\ncontinue\n", str(APPS / "badread"))
    assert r.returncode == 0, r.stdout + r.stderr
    stop = after(r.stdout, "continue")
    assert stop.splitlines()[-2:] == [
        BADREAD_LINE,
        '=> 0x401022 <badread!main+0x22>: mov rax, qword ptr [rbx]   [pid 4 "badread", ring 3]']
    assert after(r.stdout, "registers rip") == "rip = 0x401022 (4198434)"
    assert r.stdout.rstrip().endswith("the machine has stopped: every process has ended")


def test_emu_run_prints_the_same_line():
    r = subprocess.run([sys.executable, "-m", "emu", "run", str(APPS / "badread")],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 125 and BADREAD_LINE in r.stderr


# -- kill in a script, and the bound on --snapshots (item 27) ------------------------------

def test_kill_ends_the_machine_and_the_script_goes_on():
    r = debug("stepi\nkill\nstepi\ncontinue\nreverse-stepi\nregisters rip\nposition\n",
              str(APPS / "hello"))
    out = r.stdout
    assert "(emu ended) stepi\nerror: no machine is running (it was killed)\n" in out
    assert "(emu ended) continue\nerror: no machine is running (it was killed)\n" in out
    assert "(emu ended) reverse-stepi\nerror: no machine is running (it was killed)\n" in out
    assert "the machine has stopped: killed" in out
    assert "(emu ended) position\n2 instructions since boot" in out   # its state stays readable
    assert r.returncode == 1                          # commands of the script failed


def test_snapshots_have_an_upper_bound():
    r = debug("", "--snapshots", "5000", str(APPS / "hello"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        "emu: error: --snapshots must be between 0 and 64 (each snapshot is a sleeping "
        "process)"]
    ok = debug("continue\n", "--snapshots", "64", str(APPS / "hello"))
    assert ok.returncode == 0
