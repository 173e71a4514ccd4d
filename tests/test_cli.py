"""``emu run`` as a user runs it: output, exit status, one-line messages, report, trace."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def emu(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "emu", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=120)


def test_hello(apps):
    r = emu("run", apps / "hello", "a", "-b")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "Hello, world!\nargv[1] = a\nargv[2] = -b\n"
    assert r.stderr == ""


def test_exit_status_is_the_apps(apps):
    assert emu("run", apps / "exitcode", "42").returncode == 42


def test_fault_is_one_line(apps):
    r = emu("run", apps / "badread")
    assert r.returncode == 125
    lines = r.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith('process 4 "badread" terminated: STATUS_ACCESS_VIOLATION '
                               "(0xC0000005) reading 0xffff800000001000 at rip 0x")
    assert lines[0].endswith(": mov rax, qword ptr [rax]") or "qword ptr" in lines[0]


def test_report(apps, tmp_path):
    out = tmp_path / "r.json"
    r = emu("run", "--report", out, apps / "nullwrite")
    assert r.returncode == 125
    rep = json.loads(out.read_text())
    (p,) = rep["processes"]
    assert p["pid"] == 4 and p["name"] == "nullwrite" and p["exit_status"] == 0xC0000005
    exc = p["exception"]
    assert exc["code"] == 0xC0000005 and exc["name"] == "STATUS_ACCESS_VIOLATION"
    assert exc["access"] == "write" and exc["address"] == 0 and exc["params"] == [1, 0]
    assert rep["bugcheck"] is None
    assert set(rep["stats"]) >= {"instructions", "tlb_fills", "page_faults"}
    assert rep["stats"]["page_faults"] == 1


def test_max_insns(apps):
    r = emu("run", "--max-insns", "50000", apps / "spin")
    assert r.returncode == 124
    assert "stopped after 50000 instructions" in r.stderr and '"spin"' in r.stderr


def test_trace(apps, tmp_path):
    trace = tmp_path / "t.txt"
    r = emu("run", "--trace-file", trace, apps / "exitcode", "7")
    assert r.returncode == 7
    lines = trace.read_text().splitlines()
    assert lines[0].startswith("ring 0") and "iretq" in lines[0]
    assert lines[1].startswith("ring 3") and "pid 4" in lines[1]
    assert any("syscall" in line for line in lines)


@pytest.mark.parametrize("args, fragment", [
    (["run", "/nonexistent/app"], "no such file"),
    (["run", "--mem", "lots", "x"], "bad size"),
    (["run", "--mem", "100K", "x"], "memory size"),
    (["run", "--max-insns", "-5", "x"], "must be positive"),
    (["run"], "required"),
    ([], "missing command"),
    (["frobnicate"], "invalid choice"),
])
def test_usage_errors_are_one_line(args, fragment):
    r = emu(*args)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and fragment in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_not_elf(tmp_path):
    f = tmp_path / "script"
    f.write_text("#!/bin/sh\n")
    r = emu("run", f)
    assert r.returncode == 2 and "not an ELF file" in r.stderr


def test_version():
    r = emu("--version")
    assert r.returncode == 0 and "unicorn 2.1.4" in r.stdout
