"""``emu run --gdb``: the command line waits for stock gdb, whose `monitor` runs the debugger
shell's commands; bad addresses are one line and exit status 2."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import emurun
import pytest

ROOT = Path(__file__).resolve().parents[2]
HELLO = str(Path("guest") / "build" / "apps" / "hello")
GDB = shutil.which("gdb")


@pytest.fixture(autouse=True)
def _stock_gdb():
    """Stock gdb is a prerequisite (README; .ci/run installs it): without it these tests
    fail, they do not skip."""
    assert GDB is not None, "gdb is not on PATH: install it (apt-get install gdb)"


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
    r = emurun.emu("run", "--gdb", address, HELLO, cwd=ROOT, timeout=60)
    assert r.returncode == 2 and expect in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


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


def _emu_run_under_gdb(emu_args: list[str], commands: list[str]) -> tuple[str, str, str, int]:
    """``emu run --gdb 127.0.0.1:0 EMU_ARGS`` driven by ``gdb -batch`` with ``commands``:
    gdb's output, emu's stdout and stderr, emu's exit status."""
    emu = subprocess.Popen([sys.executable, "-m", "emu", "run", "--gdb", "127.0.0.1:0",
                            *emu_args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, cwd=ROOT)
    try:
        line = emu.stderr.readline()
        port = re.search(r"listening on 127\.0\.0\.1:(\d+)", line).group(1)
        args = [GDB, "-nx", "-batch", "-iex", "set debuginfod enabled off",
                "-iex", "set confirm off", str(ROOT / "guest" / "build" / "apps" / "hello"),
                "-ex", f"target remote 127.0.0.1:{port}"]
        for command in commands:
            args += ["-ex", command]
        gdb = subprocess.run(args, capture_output=True, text=True, timeout=120,
                             env={**os.environ, "LC_ALL": "C"})
        stdout, stderr = emu.communicate(timeout=120)
    finally:
        emu.kill()
    return gdb.stdout + gdb.stderr, stdout, line + stderr, emu.returncode


def _register_dumps(out: str) -> list[dict[str, str]]:
    dumps = []
    for block in out.split("==mark==")[1:]:
        # gdb's columns (the name padded to 15): not the shell's `monitor registers`
        regs = dict(re.findall(r"^([a-z][a-z0-9_]*) {3,}(0x[0-9a-f]+)\s", block, re.M))
        if "rip" in regs:
            dumps.append(regs)
    return dumps


def test_emu_run_gdb_goes_back_and_writes_its_outputs_once(tmp_path):
    """reverse-stepi and reverse-continue to a breakpoint under `emu run --gdb` land on the
    forward run's registers; going back re-executes from boot, yet the console, the trace
    file and the event log are those of the plain run, each written once."""
    show = ["echo ==mark==\\n", "info registers"]
    steps = 4
    out, stdout, stderr, status = _emu_run_under_gdb(
        ["--trace-file", str(tmp_path / "gdb.trace"), "--events", str(tmp_path / "gdb.jsonl"),
         "--report", str(tmp_path / "gdb.json"), HELLO, "x"],
        ["break main", "continue", *show,
         *[c for _ in range(steps) for c in ("stepi", *show)],
         *[c for _ in range(steps) for c in ("reverse-stepi", *show)],
         *[c for _ in range(steps) for c in ("stepi",)], *show,
         "reverse-continue", *show, "delete", "continue"])
    plain = emurun.emu("run", "--trace-file", str(tmp_path / "run.trace"), "--events",
                       str(tmp_path / "run.jsonl"), "--report", str(tmp_path / "run.json"), HELLO,
                       "x", cwd=ROOT, timeout=120)
    assert "Traceback" not in stderr and "Remote failure reply" not in out
    dumps = _register_dumps(out)
    assert len(dumps) == 2 * steps + 3
    forward, back = dumps[:steps + 1], dumps[steps + 1:2 * steps + 1]
    assert len({d["rip"] for d in forward}) == steps + 1          # it did move each time
    assert back == forward[-2::-1]                                # reverse-stepi retraces
    assert dumps[-2] == forward[-1]                               # forward again: the same
    assert "Breakpoint 1, " in out.split("reverse-continue")[-1] or \
        out.count("Breakpoint 1, ") >= 2
    assert dumps[-1] == forward[0]               # reverse-continue: back at main's breakpoint
    assert "exited normally" in out
    assert status == plain.returncode == 0
    assert stdout == plain.stdout == "Hello, world!\nargv[1] = x\n"      # printed once
    for name in ("trace", "jsonl"):
        assert (tmp_path / f"gdb.{name}").read_text() == (tmp_path / f"run.{name}").read_text()
    reports = [json.loads((tmp_path / f"{name}.json").read_text()) for name in ("gdb", "run")]
    for report in reports:      # the host's software-TLB counters: stepping refills it
        del report["stats"]["tlb_fills"], report["stats"]["stlb_hits"]
    assert reports[0] == reports[1]          # the machine that ran last, at its end


def test_emu_run_gdb_at_a_bug_check_thread_1_is_the_cpu_and_goes_back():
    """At KeBugCheckEx's stop the kernel (thread 1) shows what the CPU holds: RIP in
    nt!KeBugCheckEx, its four arguments in RCX, RDX, R8, R9 (the x64 calling convention);
    from there gdb goes back into the past (not "Program terminated"), and `monitor` reads
    the machine going back made."""
    bugcheck = str(Path("guest") / "build" / "drivers" / "bugcheck.sys")
    show = ["echo ==mark==\\n", "info registers"]
    out, _, stderr, status = _emu_run_under_gdb(
        ["--driver", bugcheck, HELLO],
        ["stepi", "stepi", "continue", "info threads", *show, "monitor registers",
         "reverse-stepi", "monitor position",
         "reverse-continue", *show, "monitor position", "continue", "continue"])
    assert "Traceback" not in stderr and "Remote failure reply" not in out
    assert 'Thread 1 "kernel" received signal SIGSEGV' in out
    assert re.search(r'^\* 1 +Thread 1 "kernel" \(kernel \(no process on the CPU\), ring 0\)'
                     r" +0xffff800000004010", out, re.M)
    at_bugcheck, at_boot = _register_dumps(out)
    # the shell's `registers` (gdb's console, an O packet): 16 hex digits each
    monitor = dict(re.findall(r"\b(rip|rsp|rcx|rdx|r8|r9) {1,2}(0x[0-9a-f]{16})\b", out))
    assert len(monitor) == 6
    assert {k: int(at_bugcheck[k], 16) for k in monitor} == \
        {k: int(v, 16) for k, v in monitor.items()}
    assert int(at_bugcheck["rip"], 16) == 0xFFFF800000004010        # nt!KeBugCheckEx
    assert [int(at_bugcheck[r], 16) for r in ("rcx", "rdx", "r8", "r9")] == [0xE2, 1, 2, 3]
    assert at_bugcheck["cs"] == "0x10"
    assert re.findall(r"(\d+) instructions? (?:and|or) exceptions? since boot", out) == \
        ["17", "0"]                   # KeBugCheckEx's call (an export: a step of its own)
    assert "No more reverse-execution history." in out
    assert out.count("Program terminated") == 1                       # at the last continue
    assert int(at_boot["rip"], 16) == 0xFFFFF80001001000              # DriverEntry
    assert out.count("the system stopped: bug check 0xe2") >= 2       # forward again
    assert "Program terminated with signal SIGSEGV" in out
    assert status == 126


def test_emu_run_gdb_going_back_after_the_app_is_gone_is_one_line(tmp_path):
    """Going back makes the machine again from its files: one removed under the run ends it
    with one line and exit status 2, not a traceback."""
    app = tmp_path / "hello"
    shutil.copy(ROOT / HELLO, app)
    _, _, stderr, status = _emu_run_under_gdb(
        [str(app)], ["stepi", f"shell rm {app}", "reverse-stepi", "info registers rip"])
    assert status == 2 and "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("emu:")]
    assert errors == [f"emu: error: cannot go back: the machine could not be made again: "
                      f"{app}: no such file"]
