"""Static checks of the guest drivers built by guest/Makefile (no emulator needed).

A driver (guest/drivers/<name>.c -> guest/build/drivers/<name>.sys) is an ELF64
x86-64 shared object that the executive loads into the kernel half and runs at
ring 0. What the loader relies on, checked here on the files themselves:

- ET_DYN with a PT_DYNAMIC, no interpreter, no DT_NEEDED, no text relocations;
- W^X page by page: no segment writable and executable, no page shared by two
  segments, offsets congruent to addresses modulo 4 KiB;
- `DriverEntry` exported (defined, global, default visibility, in the text
  segment, also e_entry), nothing else exported; noentry.sys has none;
- the undefined dynamic symbols are exactly the kernel exports the driver uses
  (badimport.sys: also IoDoesNotExist), and the relocations are only the four
  kinds the loader applies, each patching a writable page;
- no SSE register anywhere in .text (kernel code is -mgeneral-regs-only);
- the boundary speaks the Microsoft x64 ABI: ntddk.h gives DriverEntry and the
  exports gcc's ms_abi (compile tests).

The demo drivers already rebuilt as PE images are checked in test_pe_demo_build.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import pytest
from capstone import CS_ARCH_X86, CS_MODE_64, CS_OPT_SYNTAX_INTEL, Cs
from capstone.x86 import X86_OP_MEM
from elfcheck import (  # noqa: E402
    DRIVERS_DIR,
    GUEST,
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
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection

INCLUDE = GUEST / "include"

PAGE_SIZE = 0x1000

# System V AMD64 ABI, table 4.9: the relocation types the driver loader applies.
R_X86_64_64 = 1
R_X86_64_GLOB_DAT = 6
R_X86_64_JUMP_SLOT = 7
R_X86_64_RELATIVE = 8
LOADER_RELOCATIONS = {R_X86_64_64, R_X86_64_GLOB_DAT, R_X86_64_JUMP_SLOT, R_X86_64_RELATIVE}

# Each driver's imports: exactly the undefined symbols of its .dynsym.
IMPORTS = {
    "noentry": {"DbgPrint"},
    "badimport": {"DbgPrint", "IoDoesNotExist"},
}
DRIVERS = sorted(IMPORTS)
WITH_ENTRY = [name for name in DRIVERS if name != "noentry"]

# What the compile tests pass to gcc: the Makefile's DRIVER_CFLAGS that matter here.
DRIVER_CFLAGS = [
    "-std=gnu11", "-Wall", "-Werror", "-O2", "-ffreestanding", "-nostdlib",
    "-fno-stack-protector", "-fcf-protection=none", "-mno-red-zone", "-fPIC", "-fno-plt",
    "-fvisibility=hidden", "-mgeneral-regs-only", f"-I{INCLUDE}",
]

SSE_REGISTER = re.compile(r"\b(?:[xyz]mm\d+|mm\d|mxcsr)\b")


@pytest.fixture(scope="module")
def built() -> Path:
    """Builds the guests if a driver is missing or stale; returns guest/build/drivers."""
    return build_guests(DRIVERS_DIR, "drivers")


def _elf(built: Path, name: str):
    return open_elf(built / f"{name}.sys")


_run_make, _loads, _page_span, _segment_holding, _symbol = (run_make, loads, page_span,
                                                            segment_holding, symtab_entry)


def _dynsyms(elf: ELFFile) -> list:
    section = elf.get_section_by_name(".dynsym")
    assert section is not None, "no .dynsym"
    return [sym for sym in section.iter_symbols() if sym.name]


def _relocations(elf: ELFFile) -> list:
    return [
        reloc
        for section in elf.iter_sections()
        if isinstance(section, RelocationSection)
        for reloc in section.iter_relocations()
    ]


def _relocation_symbol(elf: ELFFile, reloc) -> str:
    return elf.get_section_by_name(".dynsym").get_symbol(reloc["r_info_sym"]).name


def _read(elf: ELFFile, address: int, size: int) -> bytes:
    """`size` bytes of the memory image at `address` (from the file: no .bss here)."""
    seg = _segment_holding(elf, address)
    assert seg is not None, hex(address)
    start = address - seg["p_vaddr"]
    return seg.data()[start : start + size]


def _function(elf: ELFFile, name: str) -> list:
    """The disassembly (capstone, Intel syntax, with details) of function `name`."""
    sym = _symbol(elf, name)
    assert sym is not None and sym["st_size"] > 0, name
    md = Cs(CS_ARCH_X86, CS_MODE_64)
    md.syntax = CS_OPT_SYNTAX_INTEL
    md.detail = True
    code = _read(elf, sym["st_value"], sym["st_size"])
    return list(md.disasm(code, sym["st_value"]))


def _rip_target(insn) -> int | None:
    """The address a `[rip + disp]` memory operand of `insn` names, or None."""
    for op in insn.operands:
        if op.type == X86_OP_MEM and op.mem.base != 0 and insn.reg_name(op.mem.base) == "rip":
            return insn.address + insn.size + op.mem.disp
    return None


def _find(data: bytes, text: bytes) -> int:
    offset = data.find(text)
    assert offset >= 0, text
    return offset


# -- the build ----------------------------------------------------------------------------


def test_every_driver_source_is_checked() -> None:
    sources = {p.stem for p in (GUEST / "drivers").iterdir() if p.suffix == ".c"}
    assert sources == set(DRIVERS)


def test_make_leaves_nothing_to_rebuild(built: Path) -> None:
    assert _run_make("-q", "drivers").returncode == 0, "a second make would rebuild a driver"


def test_default_goal_builds_the_drivers(built: Path) -> None:
    result = _run_make("-p", "-q", "all")
    prerequisites = {
        word
        for line in result.stdout.splitlines()
        if line.startswith("all:")
        for word in line.split()[1:]
    }
    for name in DRIVERS:
        assert f"build/drivers/{name}.sys" in prerequisites


# -- the image ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", DRIVERS)
def test_is_elf64_x86_64_shared_object(built: Path, name: str) -> None:
    elf = _elf(built, name)
    assert elf.elfclass == 64
    assert elf.little_endian
    assert elf["e_machine"] == "EM_X86_64"
    assert elf["e_type"] == "ET_DYN"
    kinds = {seg["p_type"] for seg in elf.iter_segments()}
    assert "PT_INTERP" not in kinds
    assert "PT_DYNAMIC" in kinds


@pytest.mark.parametrize("name", DRIVERS)
def test_keeps_what_the_loader_reads(built: Path, name: str) -> None:
    elf = _elf(built, name)
    for section in (".dynamic", ".dynsym", ".dynstr", ".rela.dyn"):
        assert elf.get_section_by_name(section) is not None, section
    dynamic = next(s for s in elf.iter_sections() if isinstance(s, DynamicSection))
    tags = {tag.entry.d_tag for tag in dynamic.iter_tags()}
    assert {"DT_SYMTAB", "DT_STRTAB", "DT_RELA", "DT_RELASZ"} <= tags
    assert "DT_NEEDED" not in tags, "a driver links against no library"
    assert "DT_TEXTREL" not in tags, "a relocation would patch .text"
    assert "DT_JMPREL" not in tags, "-fno-plt: no PLT relocations"


@pytest.mark.parametrize("name", DRIVERS)
def test_no_load_segment_is_writable_and_executable(built: Path, name: str) -> None:
    check_w_xor_x(_elf(built, name))


@pytest.mark.parametrize("name", DRIVERS)
def test_load_segments_share_no_page(built: Path, name: str) -> None:
    check_no_shared_page(_elf(built, name))


@pytest.mark.parametrize("name", DRIVERS)
def test_load_segments_are_page_congruent(built: Path, name: str) -> None:
    check_page_congruent(_elf(built, name))


@pytest.mark.parametrize("name", DRIVERS)
def test_text_rodata_and_data_have_their_protections(built: Path, name: str) -> None:
    elf = _elf(built, name)
    expected = {
        ".text": P_FLAGS.PF_R | P_FLAGS.PF_X,
        ".rodata": P_FLAGS.PF_R,
        ".got": P_FLAGS.PF_R | P_FLAGS.PF_W,
        ".dynamic": P_FLAGS.PF_R | P_FLAGS.PF_W,
    }
    for section_name, flags in expected.items():
        section = elf.get_section_by_name(section_name)
        assert section is not None, section_name
        seg = _segment_holding(elf, section["sh_addr"])
        assert seg is not None and seg["p_flags"] == flags, section_name


@pytest.mark.parametrize("name", DRIVERS)
def test_keeps_debug_info(built: Path, name: str) -> None:
    assert _elf(built, name).get_section_by_name(".debug_info") is not None


# -- symbols and relocations --------------------------------------------------------------


@pytest.mark.parametrize("name", WITH_ENTRY)
def test_driver_entry_is_the_only_export(built: Path, name: str) -> None:
    elf = _elf(built, name)
    defined = [sym for sym in _dynsyms(elf) if sym["st_shndx"] != "SHN_UNDEF"]
    assert [sym.name for sym in defined] == ["DriverEntry"]
    entry = defined[0]
    assert entry["st_info"]["type"] == "STT_FUNC"
    assert entry["st_info"]["bind"] == "STB_GLOBAL"
    assert entry["st_other"]["visibility"] == "STV_DEFAULT"
    seg = _segment_holding(elf, entry["st_value"])
    assert seg is not None and seg["p_flags"] & P_FLAGS.PF_X
    assert elf["e_entry"] == entry["st_value"]


def test_noentry_exports_nothing(built: Path) -> None:
    elf = _elf(built, "noentry")
    assert [sym.name for sym in _dynsyms(elf) if sym["st_shndx"] != "SHN_UNDEF"] == []
    assert _symbol(elf, "DriverEntry") is None
    assert _symbol(elf, "NotTheEntry") is not None, "the image still has code"


@pytest.mark.parametrize("name", DRIVERS)
def test_imports_are_exactly_the_exports_used(built: Path, name: str) -> None:
    elf = _elf(built, name)
    undefined = {sym.name for sym in _dynsyms(elf) if sym["st_shndx"] == "SHN_UNDEF"}
    assert undefined == IMPORTS[name]


@pytest.mark.parametrize("name", DRIVERS)
def test_relocations_are_the_kinds_the_loader_applies(built: Path, name: str) -> None:
    elf = _elf(built, name)
    relocations = _relocations(elf)
    kinds = Counter(reloc["r_info_type"] for reloc in relocations)
    assert set(kinds) <= LOADER_RELOCATIONS, kinds
    assert kinds[R_X86_64_RELATIVE] == 0
    # -fno-plt: one GOT slot (R_X86_64_GLOB_DAT) per import, and nothing else names a symbol.
    bound = Counter(
        _relocation_symbol(elf, reloc)
        for reloc in relocations
        if reloc["r_info_type"] != R_X86_64_RELATIVE
    )
    assert bound == Counter(IMPORTS[name])
    assert kinds[R_X86_64_GLOB_DAT] == len(IMPORTS[name])


@pytest.mark.parametrize("name", DRIVERS)
def test_relocations_patch_only_writable_pages(built: Path, name: str) -> None:
    elf = _elf(built, name)
    for reloc in _relocations(elf):
        seg = _segment_holding(elf, reloc["r_offset"])
        assert seg is not None and seg["p_flags"] & P_FLAGS.PF_W, hex(reloc["r_offset"])


# -- code -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", DRIVERS)
def test_no_sse_in_text(built: Path, name: str) -> None:
    elf = _elf(built, name)
    text = elf.get_section_by_name(".text")
    md = Cs(CS_ARCH_X86, CS_MODE_64)
    md.syntax = CS_OPT_SYNTAX_INTEL
    decoded = 0
    for insn in md.disasm(text.data(), text["sh_addr"]):
        decoded += insn.size
        text_of = f"{insn.mnemonic} {insn.op_str}"
        assert not SSE_REGISTER.search(text_of), f"{insn.address:#x}: {text_of}"
    assert decoded == text["sh_size"], "capstone stopped before the end of .text"


# -- ntddk.h ------------------------------------------------------------------------------


def _compile(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    path = tmp_path / "check.c"
    path.write_text(source)
    return subprocess.run(
        ["gcc", *DRIVER_CFLAGS, "-c", str(path), "-o", str(tmp_path / "check.o")],
        capture_output=True,
        text=True,
        check=False,
    )


MS_ABI_CHECKS = """
#include <ddk/ntddk.h>
#define SAME(f, type) __builtin_types_compatible_p(__typeof__(f), type)
_Static_assert(SAME(DriverEntry,
    NTSTATUS __attribute__((ms_abi)) (PDRIVER_OBJECT, PUNICODE_STRING)), "DriverEntry");
_Static_assert(!SAME(DriverEntry,
    NTSTATUS __attribute__((sysv_abi)) (PDRIVER_OBJECT, PUNICODE_STRING)), "not System V");
_Static_assert(SAME(DbgPrint, ULONG __attribute__((ms_abi)) (PCSTR, ...)), "DbgPrint");
_Static_assert(SAME(KeBugCheckEx, void __attribute__((ms_abi))
    (ULONG, ULONG_PTR, ULONG_PTR, ULONG_PTR, ULONG_PTR)), "KeBugCheckEx");
_Static_assert(SAME(ExAllocatePoolWithTag,
    PVOID __attribute__((ms_abi)) (POOL_TYPE, SIZE_T, ULONG)), "ExAllocatePoolWithTag");
_Static_assert(SAME(ExFreePoolWithTag, void __attribute__((ms_abi)) (PVOID, ULONG)), "Free");
_Static_assert(SAME(PsGetCurrentProcessId, HANDLE __attribute__((ms_abi)) (void)), "Ps");
_Static_assert(SAME(KeGetCurrentIrql, KIRQL __attribute__((ms_abi)) (void)), "Irql");
_Static_assert(sizeof(ULONG) == 4 && sizeof(NTSTATUS) == 4 && sizeof(KIRQL) == 1, "sizes");
_Static_assert(sizeof(ULONG_PTR) == 8 && sizeof(SIZE_T) == 8 && sizeof(HANDLE) == 8, "ptrs");
_Static_assert(sizeof(UNICODE_STRING) == 16, "UNICODE_STRING");
_Static_assert(NonPagedPool == 0 && PagedPool == 1 && NonPagedPoolNx == 512, "POOL_TYPE");
_Static_assert(STATUS_UNSUCCESSFUL == (NTSTATUS)0xC0000001, "STATUS_UNSUCCESSFUL");
_Static_assert(!NT_SUCCESS(STATUS_UNSUCCESSFUL) && NT_SUCCESS(STATUS_SUCCESS), "NT_SUCCESS");
"""


def test_ntddk_declares_the_boundary_ms_abi(tmp_path: Path) -> None:
    result = _compile(tmp_path, MS_ABI_CHECKS)
    assert result.returncode == 0, result.stderr


def test_driver_entry_defined_without_ntapi_does_not_compile(tmp_path: Path) -> None:
    body = "{ (void)d; (void)r; return STATUS_SUCCESS; }\n"
    good = _compile(
        tmp_path,
        "#include <ddk/ntddk.h>\n"
        f"NTSTATUS NTAPI DriverEntry(PDRIVER_OBJECT d, PUNICODE_STRING r) {body}",
    )
    assert good.returncode == 0, good.stderr
    bad = _compile(
        tmp_path,
        f"#include <ddk/ntddk.h>\nNTSTATUS DriverEntry(PDRIVER_OBJECT d, PUNICODE_STRING r) {body}",
    )
    assert bad.returncode != 0
    assert "conflicting types for" in bad.stderr and "DriverEntry" in bad.stderr
