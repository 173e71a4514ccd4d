"""Static checks of the guest apps built by guest/Makefile (no emulator needed).

Every app must be an ELF64 x86-64 image whose PT_LOAD segments give each page
exactly one protection (W^X, no page shared by two segments), so the loader can
map it with the permissions the lessons rely on; ET_EXEC apps sit at or above
0x400000, and the static PIE carries only R_X86_64_RELATIVE relocations (the
only kind the loader applies).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import pytest
from elfcheck import (  # noqa: E402
    APPS_DIR,
    GUEST,
    check_entry_is_executable,
    check_no_shared_page,
    check_page_congruent,
    check_w_xor_x,
    loads,
    open_elf,
    page_span,
    run_make,
    segment_holding,
    symtab_entry,
)
from elfcheck import build as build_guests  # noqa: E402
from elftools.elf.constants import P_FLAGS
from elftools.elf.relocation import RelocationSection

PAGE_SIZE = 0x1000
EXEC_BASE = 0x400000  # link/app.ld links ET_EXEC apps here
R_X86_64_RELATIVE = 8  # System V AMD64 ABI, table 4.9

EXEC_APPS = [
    "asyncread",
    "badptr",
    "badread",
    "breakpoint",
    "console",
    "counter",
    "crasher",
    "deadlock",
    "devbench",
    "devioctl",
    "devread",
    "divzero",
    "echo",
    "execdata",
    "exitcode",
    "fib",
    "getpid",
    "handles",
    "hello",
    "hotcold",
    "illegal",
    "ioctl",
    "kexec",
    "kwrite",
    "listcmd",
    "loop",
    "myapp",
    "noncanon",
    "notepad",
    "nullread",
    "nullwrite",
    "pagedrv",
    "pattern",
    "privileged",
    "race",
    "reader",
    "reread",
    "rowrite",
    "seh",
    "sehioctl",
    "sleeper",
    "slowread",
    "spawner",
    "spin",
    "stackoverflow",
    "staleuse",
    "sweep",
    "sysloop",
    "threadcrash",
    "threads",
    "victim",
    "vmhog",
    "vmtest",
    "waiter",
    "yielder",
]
PIE_APPS = ["hello-pie"]
ALL_APPS = EXEC_APPS + PIE_APPS


@pytest.fixture(scope="session")
def built() -> Path:
    """Builds the guests if anything is missing or stale; returns guest/build/apps."""
    return build_guests(APPS_DIR)


def _elf(built: Path, app: str):
    return open_elf(built / app)


_run_make, _loads, _page_span, _segment_holding = run_make, loads, page_span, segment_holding


def _symbol(elf, name: str) -> int | None:
    """The value of symbol `name` in .symtab, or None."""
    entry = symtab_entry(elf, name)
    return entry["st_value"] if entry is not None else None


def test_every_app_source_is_checked() -> None:
    sources = {p.stem for p in (GUEST / "apps").iterdir() if p.suffix in (".c", ".S")}
    assert sources == set(EXEC_APPS)


def test_make_leaves_nothing_to_rebuild(built: Path) -> None:
    result = _run_make("-q")
    assert result.returncode == 0, "a second make would rebuild something"


@pytest.mark.parametrize("app", ALL_APPS)
def test_is_elf64_x86_64(built: Path, app: str) -> None:
    elf = _elf(built, app)
    assert elf.elfclass == 64
    assert elf.little_endian
    assert elf["e_machine"] == "EM_X86_64"


@pytest.mark.parametrize("app", ALL_APPS)
def test_no_load_segment_is_writable_and_executable(built: Path, app: str) -> None:
    check_w_xor_x(_elf(built, app))


@pytest.mark.parametrize("app", ALL_APPS)
def test_load_segments_share_no_page(built: Path, app: str) -> None:
    check_no_shared_page(_elf(built, app))


@pytest.mark.parametrize("app", ALL_APPS)
def test_load_segments_are_page_congruent(built: Path, app: str) -> None:
    check_page_congruent(_elf(built, app))


@pytest.mark.parametrize("app", ALL_APPS)
def test_entry_point_is_in_an_executable_segment(built: Path, app: str) -> None:
    check_entry_is_executable(_elf(built, app))


@pytest.mark.parametrize("app", ALL_APPS)
def test_start_and_main_symbols_exist(built: Path, app: str) -> None:
    elf = _elf(built, app)
    assert _symbol(elf, "main") is not None
    assert _symbol(elf, "_start") == elf["e_entry"]


@pytest.mark.parametrize("app", ALL_APPS)
def test_keeps_debug_info(built: Path, app: str) -> None:
    assert _elf(built, app).get_section_by_name(".debug_info") is not None


@pytest.mark.parametrize("app", EXEC_APPS)
def test_exec_app_is_static_at_or_above_0x400000(built: Path, app: str) -> None:
    elf = _elf(built, app)
    assert elf["e_type"] == "ET_EXEC"
    assert min(seg["p_vaddr"] for seg in _loads(elf)) >= EXEC_BASE
    kinds = {seg["p_type"] for seg in elf.iter_segments()}
    assert "PT_INTERP" not in kinds
    assert "PT_DYNAMIC" not in kinds
    assert not any(isinstance(s, RelocationSection) for s in elf.iter_sections())


@pytest.mark.parametrize("app", PIE_APPS)
def test_pie_has_only_relative_relocations(built: Path, app: str) -> None:
    elf = _elf(built, app)
    assert elf["e_type"] == "ET_DYN"
    kinds = {seg["p_type"] for seg in elf.iter_segments()}
    assert "PT_INTERP" not in kinds
    assert "PT_DYNAMIC" in kinds
    relocations = [
        reloc
        for section in elf.iter_sections()
        if isinstance(section, RelocationSection)
        for reloc in section.iter_relocations()
    ]
    assert relocations, "expected at least one R_X86_64_RELATIVE for the loader to apply"
    for reloc in relocations:
        assert reloc["r_info_type"] == R_X86_64_RELATIVE, reloc


@pytest.mark.parametrize("app", PIE_APPS)
def test_pie_relocations_patch_only_writable_pages(built: Path, app: str) -> None:
    elf = _elf(built, app)
    for section in elf.iter_sections():
        if not isinstance(section, RelocationSection):
            continue
        for reloc in section.iter_relocations():
            seg = _segment_holding(elf, reloc["r_offset"])
            assert seg is not None and seg["p_flags"] & P_FLAGS.PF_W, hex(reloc["r_offset"])


# What each faulting app relies on: (app, symbol, flag the page must have, flag it must lack).
PLACEMENTS = [
    ("rowrite", "read_only_value", P_FLAGS.PF_R, P_FLAGS.PF_W),
    ("execdata", "data_code", P_FLAGS.PF_W, P_FLAGS.PF_X),
]


@pytest.mark.parametrize(("app", "symbol", "has", "lacks"), PLACEMENTS)
def test_fault_target_has_the_right_protection(
    built: Path, app: str, symbol: str, has: int, lacks: int
) -> None:
    elf = _elf(built, app)
    address = _symbol(elf, symbol)
    assert address is not None
    seg = _segment_holding(elf, address)
    assert seg is not None
    assert seg["p_flags"] & has
    assert not seg["p_flags"] & lacks


def test_sweep_buffer_is_bss(built: Path) -> None:
    data = [seg for seg in _loads(_elf(built, "sweep")) if seg["p_flags"] & P_FLAGS.PF_W]
    assert len(data) == 1
    assert data[0]["p_memsz"] >= 64 << 20
    assert data[0]["p_filesz"] < PAGE_SIZE
