"""Shared by the guest build tests: building the guests, opening ELF files, and the segment
rules every guest image keeps (W^X, one protection per page, mmap-style file offsets)."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import pytest
from elftools.elf.constants import P_FLAGS
from elftools.elf.elffile import ELFFile

GUEST = Path(__file__).resolve().parents[2] / "guest"
APPS_DIR = GUEST / "build" / "apps"
DRIVERS_DIR = GUEST / "build" / "drivers"
PAGE_SIZE = 0x1000


def run_make(*args: str) -> subprocess.CompletedProcess[str]:
    """Runs make in guest/ and returns the finished process."""
    return subprocess.run(["make", "-C", str(GUEST), *args], capture_output=True, text=True,
                          check=False)


def build(directory: Path, *check: str) -> Path:
    """Builds the guests if `make -q CHECK` says anything is missing or stale; returns
    ``directory`` (skips without make, fails with make's output if the build fails)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    if run_make("-q", *check).returncode != 0:
        result = run_make()
        if result.returncode != 0:
            pytest.fail(f"make -C guest failed:\n{result.stdout}{result.stderr}")
    return directory


def open_elf(path: Path) -> ELFFile:
    """An ELFFile over an in-memory copy of ``path`` (no file left open)."""
    assert path.is_file(), f"{path} was not built"
    return ELFFile(io.BytesIO(path.read_bytes()))


def loads(elf: ELFFile) -> list:
    return [seg for seg in elf.iter_segments() if seg["p_type"] == "PT_LOAD"]


def page_span(seg) -> range:
    """The virtual page numbers a PT_LOAD segment touches."""
    first = seg["p_vaddr"] // PAGE_SIZE
    last = (seg["p_vaddr"] + max(seg["p_memsz"], 1) - 1) // PAGE_SIZE
    return range(first, last + 1)


def segment_holding(elf: ELFFile, address: int):
    """The PT_LOAD segment whose memory image contains `address`, or None."""
    for seg in loads(elf):
        if seg["p_vaddr"] <= address < seg["p_vaddr"] + seg["p_memsz"]:
            return seg
    return None


def symtab_entry(elf: ELFFile, name: str):
    """The .symtab entry called `name` (locals included), or None."""
    symtab = elf.get_section_by_name(".symtab")
    found = symtab.get_symbol_by_name(name) if symtab is not None else None
    return found[0] if found else None


def check_w_xor_x(elf: ELFFile) -> None:
    """No PT_LOAD segment is both writable and executable."""
    for seg in loads(elf):
        flags = seg["p_flags"]
        assert not (flags & P_FLAGS.PF_W and flags & P_FLAGS.PF_X), hex(seg["p_vaddr"])


def check_no_shared_page(elf: ELFFile) -> None:
    """No two PT_LOAD segments touch the same page (each page has one protection)."""
    spans = [page_span(seg) for seg in loads(elf)]
    for i, a in enumerate(spans):
        for b in spans[i + 1:]:
            assert a.stop <= b.start or b.stop <= a.start, (a, b)


def check_page_congruent(elf: ELFFile) -> None:
    """File offsets are congruent to addresses modulo the page size (mmap-able)."""
    for seg in loads(elf):
        assert seg["p_offset"] % PAGE_SIZE == seg["p_vaddr"] % PAGE_SIZE


def check_entry_is_executable(elf: ELFFile) -> None:
    """The entry point lies in the file-backed part of an executable PT_LOAD segment."""
    seg = segment_holding(elf, elf["e_entry"])
    assert seg is not None, hex(elf["e_entry"])
    assert seg["p_flags"] & P_FLAGS.PF_X
    assert elf["e_entry"] < seg["p_vaddr"] + seg["p_filesz"]
