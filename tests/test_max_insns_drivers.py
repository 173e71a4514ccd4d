"""One meaning of `--max-insns` (README.md, docs/report.md): instructions are counted from the
first one the machine runs, a DriverEntry's included, under `emu run` as under `emu debug` and
`emu run --events`. So `--max-insns N` stops at the same instruction wherever it is asked for,
and a driver timing its own DriverEntry reads the same clock."""

from __future__ import annotations

import json
import re
from pathlib import Path

import emurun
import pesource
import pytest

ROOT = Path(__file__).resolve().parent.parent
DRIVERS = ROOT / "guest" / "build" / "drivers"

# DriverEntry spins in a loop of its own before it calls anything: its first instructions
# are all counted positions (no export call, which the debugger counts as a step of its own).
SPIN = r"""
#include <ntddk.h>

volatile ULONG64 spin;

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNREFERENCED_PARAMETER(DriverObject);
    UNREFERENCED_PARAMETER(RegistryPath);
    for (ULONG i = 0; i < 40000; i++)
        spin += i;
    DbgPrint("spin.sys: %llu\n", spin);
    return STATUS_SUCCESS;
}
"""


def emu(*args, stdin=None):
    """``python -m emu ARGS``, in a fork of this process (tests/emurun.py)."""
    return emurun.emu(*args, input=stdin, cwd=ROOT, timeout=300)


@pytest.fixture(scope="module")
def spin(tmp_path_factory) -> Path:
    return pesource.build_sources(tmp_path_factory.mktemp("spin"), {"spin": SPIN})["spin"]


# Across the quantum (100,000): the budget is renewed inside DriverEntry.
@pytest.mark.parametrize("n", [1, 4, 50_000, 100_001])
def test_max_insns_stops_inside_driver_entry_where_emu_debug_stops(apps, spin, n):
    run = emu("run", "--max-insns", n, "--driver", spin, apps / "hello")
    assert run.returncode == 124, run.stderr
    assert run.stdout == ""                        # DriverEntry never reached its DbgPrint
    stop = re.fullmatch(rf'emu: stopped after {n} instructions \(--max-insns\); still '
                        r'running: process 12 "hello", at rip (0x[0-9a-f]+)\n', run.stderr)
    assert stop is not None, run.stderr
    debug = emu("debug", "--stop-at-driver", "--driver", spin, apps / "hello",
                stdin=f"stepi {n}\nposition\ninfo registers rip\n")
    assert f"{n} instruction{'s' if n > 1 else ''} and exceptions since boot" in debug.stdout \
        or (n == 1 and "1 instruction or exception since boot" in debug.stdout), debug.stdout
    assert f"rip = {stop[1]} " in debug.stdout
    assert "spin.sys!DriverEntry+" in debug.stdout


def test_the_report_counts_driver_entry_and_a_limit_one_short_stops_the_machine(apps, spin,
                                                                                 tmp_path):
    # stats.instructions of a counted run (docs/report.md) includes DriverEntry's loop; the
    # same run with one instruction less stops at that last instruction.
    report = tmp_path / "r.json"
    counted = emu("run", "--max-insns", 10 ** 9, "--report", report, "--driver", spin,
                  apps / "hello")
    assert counted.returncode == 0, counted.stderr
    assert counted.stdout.startswith("spin.sys: 799980000\n")
    total = json.loads(report.read_text())["stats"]["instructions"]
    hello = tmp_path / "hello.json"
    assert emu("run", "--max-insns", 10 ** 9, "--report", hello, apps / "hello").returncode == 0
    assert total > json.loads(hello.read_text())["stats"]["instructions"] + 100_000
    limited = emu("run", "--max-insns", total - 1, "--driver", spin, apps / "hello")
    assert limited.returncode == 124
    assert f"emu: stopped after {total - 1} instructions (--max-insns)" in limited.stderr


def test_petime_reads_the_same_clock_under_emu_run_max_insns_and_emu_debug(apps):
    # petime.sys times a delay in its DriverEntry; counted from the first instruction under
    # both, the instructions it runs between its readings of the clock count under both.
    argv = ["--driver", DRIVERS / "petime.sys", apps / "hello"]
    limited = emu("run", "--max-insns", 10 ** 9, *argv).stdout
    debugged = emu("debug", *argv, stdin="continue\n").stdout

    def delay(out: str) -> str:
        return next(line for line in out.splitlines() if "after the delay" in line)
    assert delay(limited) == delay(debugged)
    assert not delay(limited).endswith("interrupt +312500 system +312500 ticks +2 "
                                       "counter +312500")
