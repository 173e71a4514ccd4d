"""Crash dumps: written on a bug check, read back with everything a debugger needs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from emu.nt import dump, layout

DRIVERS = Path(__file__).resolve().parents[2] / "guest" / "build" / "drivers"


def test_a_bug_check_writes_a_dump_that_reads_back(apps, tmp_path):
    if not (DRIVERS / "slowneither.sys").exists():
        pytest.skip("drivers not built")
    out = tmp_path / "crash.dmp"
    r = subprocess.run([sys.executable, "-m", "emu", "run", "--dump", str(out), "--driver",
                        str(DRIVERS / "slowneither.sys"), str(apps / "slowread"),
                        "\\Device\\SlowNeither", "--", str(apps / "counter"), "x", "3"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 126 and f"crash dump written to {out}" in r.stderr
    d = dump.read(out)
    bc = d.header["bugcheck"]
    assert bc["code"] == 0xD1 and bc["driver"] == "slowneither.sys" and bc["irql"] == 2
    assert [p["name"] for p in d.header["processes"]] == ["slowread", "counter"]
    (driver,) = d.header["drivers"]
    assert driver["base"] == layout.KERNEL_DRIVERS and "DpcForIsr" in driver["symbols"]
    assert len(d.ram) == 64 << 20
    # the page tables are in it: the system PML4's kernel slot 256 is present
    cr3 = d.header["control"]["cr3"]
    pml4e = int.from_bytes(d.read_physical(cr3 + 256 * 8, 8), "little")
    assert pml4e & 1


def test_no_bug_check_no_dump(apps, tmp_path):
    out = tmp_path / "none.dmp"
    r = subprocess.run([sys.executable, "-m", "emu", "run", "--dump", str(out),
                        str(apps / "hello")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not out.exists()


def test_reading_something_else_is_a_one_line_error(tmp_path):
    bad = tmp_path / "x.dmp"
    bad.write_bytes(b"hello")
    with pytest.raises(dump.DumpError, match="not an emu crash dump"):
        dump.read(bad)
    bad.write_bytes(dump.MAGIC + b"\x05\x00\x00\x00\x00\x00\x00\x00{bad}")
    with pytest.raises(dump.DumpError, match="damaged"):
        dump.read(bad)


def test_the_header_holds_what_the_debugger_reads_offline(apps, tmp_path):
    from emu import Machine

    m = Machine("64M")
    m.add_driver(DRIVERS / "crash.sys")
    proc = m.spawn(apps / "hello")
    assert m.run().stopped == "bug check"
    out = tmp_path / "crash.dmp"
    dump.write(m.executive, out)
    h = dump.read(out).header
    (p,) = h["processes"]
    assert p["space"] and p["image"]["symbols"]["main"] == proc.image.symbols["main"]
    assert [v["base"] for v in p["vads"]][:1] == [0x400000] and p["handles"] == []
    assert p["threads"][0]["started"] is False and p["threads"][0]["rip"] == proc.image.entry
    assert h["descriptors"]["gdtr"] == [layout.KERNEL_GDT, 0x4F]
    assert h["current_pid"] is None and h["irql"] == 0
    frames = {r[0]: r for r in h["pfn"]}
    pml4 = frames[proc.space.cr3 >> 12]
    assert pml4[1:3] == ["page table", proc.pid]
    assert {"ds", "fs_base", "gs_base"} <= set(h["registers"])
    m.close()
