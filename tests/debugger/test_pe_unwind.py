"""`bt`, `lm`, the blue screen and crash dumps for PE drivers: frames found by virtual unwind
through the image's .pdata/.xdata (emu.nt.unwind), names from the PDB the linker wrote
(static functions too), and each PE driver's sections."""

from __future__ import annotations

import subprocess
from pathlib import Path

import emurun
import pytest

ROOT = Path(__file__).resolve().parents[2]
APPS = Path("guest") / "build" / "apps"
DRIVERS = Path("guest") / "build" / "drivers"
GUARDED, UNGUARDED = "0x222403", "0x222407"
CALLED = ("    (called by the executive: a driver routine (DriverEntry, dispatch, ISR, DPC) "
          "starts the kernel stack)")


def debug(script: str, *args: str) -> subprocess.CompletedProcess:
    """``emu debug ARGS`` with ``script`` on standard input, in a fork (tests/emurun.py)."""
    return emurun.emu("debug", *args, input=script, cwd=ROOT, timeout=120)


def peseh(*args: str) -> tuple[str, ...]:
    return ("--driver", str(DRIVERS / "peseh.sys"), str(APPS / "sehioctl"), "\\??\\PeSeh",
            *args)


def frames(out: str) -> list[str]:
    """The ``bt`` lines after the last prompt that ran ``bt``."""
    text = out.rsplit(") bt\n", 1)[1]
    return [line for line in text.splitlines() if not line.startswith("(emu")]


def names(lines: list[str]) -> list[str]:
    return [line.split(" in ", 1)[1] for line in lines if line.startswith("#")]


def test_bt_at_a_breakpoint_in_a_static_function_names_each_frame():
    r = debug("break peseh.sys!Reverse\ncontinue\nbt\n", *peseh(GUARDED))
    assert r.returncode == 0, r.stderr
    lines = frames(r.stdout)
    assert names(lines)[0] == "peseh.sys!Reverse"
    assert names(lines)[1].startswith("peseh.sys!DeviceControl+0x")
    assert lines[2:] == [CALLED]


@pytest.mark.parametrize("steps", [1, 3, 6])
def test_bt_inside_the_prolog_unwinds_only_what_it_pushed(steps):
    # Reverse's prolog pushes registers one by one: wherever RIP stands in it, the unwind
    # codes that already ran are undone and the caller is found all the same.
    r = debug(f"break peseh.sys!Reverse\ncontinue\nstepi {steps}\nbt\n", *peseh(GUARDED))
    lines = frames(r.stdout)
    assert names(lines)[0].startswith("peseh.sys!Reverse+0x")
    assert names(lines)[1].startswith("peseh.sys!DeviceControl+0x") and lines[2:] == [CALLED]


def test_the_blue_screen_unwinds_through_the_export_that_raised():
    r = emurun.emu("run", *peseh(UNGUARDED,
                        "0xffff900000000000"), cwd=ROOT, timeout=120)
    assert r.returncode == 126
    stack = next(line for line in r.stderr.splitlines() if line.startswith("*** Stack: "))
    # RIP is ProbeForRead's trap address; the frame below it is DeviceControl's call.
    assert stack.startswith("*** Stack: peseh.sys!DeviceControl+0x") and "<-" not in stack
    assert "(peseh.sys!DeviceControl+0x" in r.stderr


def test_lm_shows_a_pe_driver_s_sections_with_their_rights():
    r = debug("lm\n", "--driver", str(DRIVERS / "peinit.sys"), str(APPS / "hello"))
    lines = r.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if " driver " in line and "peinit.sys" in line)
    sections = [line.split() for line in lines[at + 1:at + 7]]
    assert [(s[0], s[3]) for s in sections] == [
        (".text", "r-x"), (".rdata", "r--"), (".buildid", "r--"), (".data", "rw-"),
        (".pdata", "r--"), ("INIT", "r-x")]
    assert lines[at + 6].endswith("discardable (freed after DriverEntry)")
    base = int(lines[at].split()[0], 16)
    assert int(sections[0][1], 16) == base + 0x1000


def test_a_crash_dump_keeps_the_unwind_data_for_bt(tmp_path):
    dump = tmp_path / "seh.dmp"
    run = emurun.emu("run", "--dump", str(dump), *peseh(UNGUARDED, "0xffff900000000000"), cwd=ROOT,
                     timeout=120)
    assert run.returncode == 126, run.stderr
    r = debug("bt\nlm\n", "--dump", str(dump))
    assert r.returncode == 0, r.stderr
    bt = r.stdout.split(") bt\n", 1)[1].split("\n(emu", 1)[0].splitlines()
    assert names(bt)[0] == "nt!ProbeForRead"
    assert names(bt)[1].startswith("peseh.sys!DeviceControl+0x") and bt[2:] == [CALLED]
    assert "      .pdata   " in r.stdout


def test_analyze_explains_0x7e_with_the_records_and_the_stack(tmp_path):
    dump = tmp_path / "entry.dmp"
    emurun.emu("run", "--dump", str(dump), "--driver", str(DRIVERS / "pesehentry.sys"),
               str(APPS / "hello"), cwd=ROOT, timeout=120)
    r = debug("analyze\n", "--dump", str(dump))
    out = r.stdout.splitlines()
    assert any(line.endswith("bug check 0x7e SYSTEM_THREAD_EXCEPTION_NOT_HANDLED: a system "
                             "thread (a driver's DriverEntry or DriverUnload) raised an "
                             "exception that nothing handled") for line in out)
    params = [line.split() for line in out if line.startswith("  parameter ")]
    assert params[0][2:4] == ["STATUS_ACCESS_VIOLATION", "(0xC0000005)"]
    assert params[1][3].startswith("(pesehentry.sys!DriverEntry+0x")
    assert " ".join(params[2][3:]) == "the exception record"
    assert " ".join(params[3][3:]) == "the context record"
    stack = out[out.index("  stack:") + 1:]
    assert stack[0].endswith(" in nt!ProbeForRead")
    assert " in pesehentry.sys!DriverEntry+0x" in stack[1]
