"""``emu run --gdb``: the command line waits for stock gdb, whose `monitor` runs the debugger
shell's commands; bad addresses are one line and exit status 2."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HELLO = str(Path("guest") / "build" / "apps" / "hello")
GDB = shutil.which("gdb")


@pytest.mark.skipif(GDB is None, reason="gdb is not installed: this test drives stock gdb")
def test_emu_run_gdb_with_monitor_commands():
    emu = subprocess.Popen([sys.executable, "-m", "emu", "run", "--gdb", "127.0.0.1:0", HELLO,
                            "x"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           cwd=ROOT)
    try:
        line = emu.stderr.readline()
        port = re.search(r"listening on 127\.0\.0\.1:(\d+)", line).group(1)
        gdb = subprocess.run(
            [GDB, "-nx", "-batch", "-iex", "set debuginfod enabled off",
             "-ex", f"target remote 127.0.0.1:{port}", "-ex", "stepi",
             "-ex", "monitor walk $rsp", "-ex", "monitor lm", "-ex", "monitor stepi",
             "-ex", "continue"], capture_output=True, text=True, timeout=120,
            env={**os.environ, "LC_ALL": "C"})
        out = gdb.stdout + gdb.stderr
        stdout, stderr = emu.communicate(timeout=120)
    finally:
        emu.kill()
    assert "PTE   [" in out and "physical address 0x" in out          # walk, in gdb
    assert "hello" in out.split("monitor lm")[-1] or "0x401000" in out
    assert "error: 'stepi' runs the machine" in out
    assert "exited normally" in out
    assert emu.returncode == 0 and stdout == "Hello, world!\nargv[1] = x\n"


@pytest.mark.parametrize("address, expect", [("notaport", "notaport"),
                                             ("10.1.2.3:1234", "10.1.2.3")])
def test_bad_gdb_addresses_are_one_line(address, expect):
    r = subprocess.run([sys.executable, "-m", "emu", "run", "--gdb", address, HELLO],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2 and expect in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(GDB is None, reason="gdb is not installed: this test drives stock gdb")
def test_emu_run_gdb_with_a_driver_stops_before_driver_entry_and_monitor_has_the_machine():
    crash = str(Path("guest") / "build" / "drivers" / "crash.sys")
    emu = subprocess.Popen([sys.executable, "-m", "emu", "run", "--gdb", "127.0.0.1:0",
                            "--driver", crash, HELLO], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        line = emu.stderr.readline()
        port = re.search(r"listening on 127\.0\.0\.1:(\d+)", line).group(1)
        gdb = subprocess.run(
            [GDB, "-nx", "-batch", "-iex", "set debuginfod enabled off",
             "-ex", f"target remote 127.0.0.1:{port}", "-ex", "monitor why",
             "-ex", "monitor position", "-ex", "monitor registers rip",
             "-ex", "stepi", "-ex", "monitor position", "-ex", "continue"],
            capture_output=True, text=True, timeout=120, env={**os.environ, "LC_ALL": "C"})
        out = gdb.stdout + gdb.stderr
        emu.communicate(timeout=120)
    finally:
        emu.kill()
    assert "stopped before DriverEntry at crash.sys!DriverEntry, ring 0" in out
    assert "0 instructions and exceptions since boot" in out
    assert "1 instruction or exception since boot" in out
    assert "no machine is running" not in out
    entry = int(re.search(r"rip = (0x[0-9a-f]+)", out).group(1), 16)
    assert entry >= 0xffff800000000000                # DriverEntry's first instruction
    assert "bug check 0x50" in out                     # continue: its faulting store
    assert emu.returncode == 126
