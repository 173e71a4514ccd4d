"""Crash dumps: written on a bug check, read back with everything a debugger needs."""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import emurun
import pytest
from dumpcase import crash_dump, parts

from emu.nt import dump, layout

DRIVERS = Path(__file__).resolve().parents[2] / "guest" / "build" / "drivers"


def test_a_bug_check_writes_a_dump_that_reads_back(apps, tmp_path):
    if not (DRIVERS / "slowneither.sys").exists():
        pytest.skip("drivers not built")
    out = tmp_path / "crash.dmp"
    r = emurun.emu("run", "--dump", str(out), "--driver", str(DRIVERS / "slowneither.sys"),
                   str(apps / "slowread"), "\\Device\\SlowNeither", "--", str(apps / "counter"),
                   "x", "3", timeout=120)
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
    r = emurun.emu("run", "--dump", str(out), str(apps / "hello"), timeout=60)
    assert r.returncode == 0 and not out.exists()


def test_reading_something_else_is_a_one_line_error(tmp_path):
    bad = tmp_path / "x.dmp"
    bad.write_bytes(b"hello")
    with pytest.raises(dump.DumpError) as err:
        dump.read(bad)
    assert str(err.value) == f"{bad}: not a crash dump: its first line is not " \
                             "'EMU-CRASH-DUMP 1' (not an emu crash dump, or one of another version)"
    bad.write_bytes(dump.MAGIC + b"\x05\x00\x00\x00\x00\x00\x00\x00{bad}")
    with pytest.raises(dump.DumpError) as err:
        dump.read(bad)
    assert str(err.value) == f"{bad}: not a crash dump: its header is not JSON " \
                             "(JSONDecodeError)"


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


# -- damaged dumps: refused in one line, with bounded work ---------------------------------------

@pytest.fixture(scope="module")
def real_dump(tmp_path_factory, apps):
    """A crash dump of a small machine (crash.sys under hello): its path."""
    return crash_dump(apps, tmp_path_factory.mktemp("dump"))


def rewrite(path, meta, ram: bytes, length: int | None = None) -> None:
    text = meta if isinstance(meta, bytes) else json.dumps(meta).encode()
    path.write_bytes(dump.MAGIC + struct.pack("<Q", len(text) if length is None else length)
                     + text + ram)


def refusal(path) -> str:
    """Why dump.read refuses ``path`` (one line, the path first)."""
    with pytest.raises(dump.DumpError) as err:
        dump.read(path)
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"{path}: not a crash dump: ")
    return text.split(": not a crash dump: ", 1)[1]


def _set(path: str, value):
    def change(meta: dict) -> None:
        *parents, last = path.split(".")
        node = meta
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return change


def _rename(old: str, new: str):
    def change(meta: dict) -> None:
        meta[new] = meta.pop(old)
    return change


@pytest.mark.parametrize("change, why", [
    (lambda m: [m], "header is not an object"),
    (_rename("processes", "procs"), "header has no 'processes'"),
    (_set("processes.0.pid", "4"), "header.processes[0].pid is not an integer in "
                                   "[0x0, 0x100000000)"),
    (_set("processes.0.vads.0.end", 1 << 60),
     "header.processes[0].vads[0] [0x400000, 0x1000000000000000) is not whole pages of the "
     "user half"),
    (_set("processes.0.vads.0.runs.0.1", 0x10000),
     "header.processes[0].vads[0].runs[0] [0x400000, 0x10000) is not whole pages after the "
     "last run, inside [0x400000, 0x404000)"),
    (_set("bugcheck.params", [1, 2]), "header.bugcheck.params is not a list of 4 items"),
    (_set("registers.rip", -1), "header.registers.rip is not an integer in "
                                "[0x0, 0x10000000000000000)"),
    (_set("processes.0.exception", {"code": 5, "rip": 0, "instruction": "", "x": 1}),
     "header.processes[0].exception has an unknown key 'x'"),
    (_set("ram_size", 128 << 30), "header.ram_size is not an integer in "
                                  "[0x100000, 0x1000000001)"),
    (_set("pfn.0.0", 1 << 40), "header.pfn[0] names frame 0x10000000000, beyond RAM"),
    (_set("descriptors.gdtr", [0, 1 << 20]), "header.descriptors.gdtr[1] is not an integer "
                                             "in [0x0, 0x10000)"),
])
def test_a_damaged_header_is_refused_naming_the_field(real_dump, tmp_path, change, why):
    meta, ram = parts(real_dump)
    result = change(meta)
    bad = tmp_path / "bad.dmp"
    rewrite(bad, result if result is not None else meta, ram)
    assert refusal(bad) == why


def test_a_real_dump_passes_the_schema_and_reads_back(real_dump):
    d = dump.read(real_dump)
    assert len(d.ram) == 8 << 20 and d.header["processes"][0]["name"] == "hello"
    cr3 = d.header["control"]["cr3"]
    assert int.from_bytes(d.read_physical(cr3 + 256 * 8, 8), "little") & 1


def test_a_ram_image_larger_than_declared_is_refused_without_inflating_it_all(real_dump,
                                                                             tmp_path):
    meta, _ = parts(real_dump)
    bomb = zlib.compress(bytes(64 << 20), 9)                 # 64 KiB inflating to 64 MiB
    rewrite(tmp_path / "bomb.dmp", meta, bomb)
    assert refusal(tmp_path / "bomb.dmp") == \
        "its RAM image is larger than the 8388608 bytes the header declares"


def test_a_truncated_or_padded_dump_is_refused(real_dump, tmp_path):
    meta, ram = parts(real_dump)
    bad = tmp_path / "bad.dmp"
    rewrite(bad, meta, ram[:len(ram) // 2])
    assert refusal(bad).startswith("its RAM image ends after ")
    rewrite(bad, meta, ram + b"more")
    assert refusal(bad) == "there is data after its RAM image"
    rewrite(bad, meta, ram[:10] + bytes(40) + ram[50:])
    assert refusal(bad).startswith("its RAM image is damaged (")
    rewrite(bad, meta, ram, length=1 << 40)
    assert refusal(bad) == f"its header's length ({1 << 40} bytes) runs past the end of " \
                           "the file"
    rewrite(bad, b"[" * 100_000, b"")
    assert refusal(bad) == "its header is not JSON (RecursionError)"
    bad.write_bytes(dump.MAGIC + b"\x01")
    assert refusal(bad) == "it ends before the header's length"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)                                   # nobody writes: reading it would block
    assert refusal(fifo) == "it is not a regular file"
    assert refusal(Path("/dev/zero")) == "it is not a regular file"


def test_emu_debug_refuses_a_damaged_dump_in_one_line(real_dump, tmp_path):
    meta, ram = parts(real_dump)
    bad = tmp_path / "bad.dmp"
    rewrite(bad, [meta], ram)
    r = emurun.emu("debug", "--dump", str(bad), input="", timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == f"emu: error: {bad}: not a crash dump: header is not an object\n"


def test_vmmap_of_a_vad_spanning_the_user_half_counts_only_pages_present(real_dump, tmp_path):
    """The work is the pages present, not the region's size (24 G pages here)."""
    meta, ram = parts(real_dump)
    vads = meta["processes"][0]["vads"]
    vads.append({"base": 0x1000_0000_0000, "end": 0x7000_0000_0000, "type": "MEM_PRIVATE",
                 "protect": 4, "stack": False,
                 "runs": [[0x1000_0000_0000, 0x7000_0000_0000, "MEM_RESERVE", 0]]})
    big = tmp_path / "big.dmp"
    rewrite(big, meta, ram)
    r = emurun.emu("debug", "--dump", str(big), input="vmmap 12\n", timeout=120)
    assert r.returncode == 0, r.stderr
    (line,) = [x for x in r.stdout.splitlines() if "0x0000100000000000" in x]
    assert line.split() == ["0x0000100000000000", "0x0000700000000000", "98304", "GiB", "reserve",
                            "---", "U", "-", "private", "0", "private"]
