"""Options that make no sense alone, or with another, are refused with one line before any
machine starts, never silently ignored (``emu run`` and ``emu debug``)."""

from __future__ import annotations

from pathlib import Path

import emurun
import pytest

ROOT = Path(__file__).resolve().parents[1]
DRIVERS = ROOT / "guest" / "build" / "drivers"


def emu(*args, stdin: str = ""):
    """``python -m emu ARGS``, in a fork of this process (tests/emurun.py)."""
    return emurun.emu(*args, input=stdin, cwd=ROOT, timeout=120)


def test_stop_at_driver_without_a_driver_is_refused(apps):
    r = emu("debug", "--stop-at-driver", apps / "hello", stdin="c\n")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == ("emu: error: --stop-at-driver needs --driver (there is no driver to "
                        "stop at)\n")


@pytest.mark.parametrize("extra, named", [
    (["{app}"], "APP"),
    (["--mem", "128M"], "--mem"),
    (["--driver", "{sys}"], "--driver"),
    (["--stop-at-driver"], "--stop-at-driver"),
    (["--quantum", "5"], "--quantum"),
    (["--fs", "/tmp"], "--fs"),
    (["--smap"], "--smap"),
    (["--no-pagefile"], "--no-pagefile"),
    (["--pagefile-size", "8M"], "--pagefile-size"),
    (["--snapshots", "8"], "--snapshots"),
    (["--snapshot-interval", "1000"], "--snapshot-interval"),
])
def test_debug_dump_with_machine_options_is_refused(apps, tmp_path, extra, named):
    dump = tmp_path / "crash.dmp"
    dump.write_bytes(b"whatever")       # refused before the file is even read
    extra = [w.format(app=apps / "hello", sys=DRIVERS / "hello.sys") for w in extra]
    r = emu("debug", "--dump", dump, *extra)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == (f"emu: error: --dump {dump} opens a crash dump and starts no machine: "
                        f"{named} does not apply\n")


def test_snapshot_interval_without_snapshots_is_refused(apps):
    r = emu("debug", "--snapshots", "0", "--snapshot-interval", "1000", apps / "hello")
    assert r.returncode == 2
    assert r.stderr == ("emu: error: --snapshot-interval has no effect with --snapshots 0 "
                        "(no snapshots are taken)\n")


def test_debug_pagefile_size_with_no_pagefile_is_refused(apps):
    r = emu("debug", "--no-pagefile", "--pagefile-size", "8M", apps / "hello")
    assert r.returncode == 2
    assert r.stderr == "emu: error: --no-pagefile cannot be combined with --pagefile-size\n"


def test_run_dump_without_a_bug_check_says_no_dump_was_written(apps, tmp_path):
    out = tmp_path / "d.dmp"
    r = emu("run", "--dump", out, apps / "exitcode", "7")
    assert r.returncode == 7 and not out.exists()
    assert r.stderr == f"emu: no bug check: no crash dump written to {out}\n"


@pytest.mark.parametrize("command", ["run", "debug"])
def test_fs_that_is_not_a_folder_is_refused(apps, tmp_path, command):
    """emu debug started the machine with it (the guests then found no file at all)."""
    missing = tmp_path / "nothing"
    r = emu(command, "--fs", missing, apps / "hello", stdin="continue\n")
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == f"emu: error: --fs {missing}: not a directory\n"
