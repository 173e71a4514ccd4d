"""The image loader: static ELF64 x86-64 executables for ring-3 processes.

What it accepts (System V gABI and the x86-64 psABI):
- ET_EXEC: PT_LOAD segments at their link addresses, which must lie in the user half;
- ET_DYN static-pie: the same, moved to a base the loader chooses, with only
  R_X86_64_RELATIVE relocations (``*(base + offset) = base + addend``).
Each page gets the permissions of its segment's flags (no PF_X -> NX, no PF_W
-> read-only). Bytes past p_filesz up to p_memsz are zero (.bss).

Everything else is refused with one line that says what is wrong, because a
user who hands the machine a bad file made a mistake, not the emulator.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from emu.nt.layout import (
    MM_HIGHEST_USER_ADDRESS,
    MM_LOWEST_USER_ADDRESS,
    PAGE_SIZE,
    PIE_IMAGE_BASE,
)

PF_X, PF_W, PF_R = 1, 2, 4
PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 2, 3
R_X86_64_NONE, R_X86_64_RELATIVE = 0, 8
DT_RELA, DT_RELASZ, DT_RELAENT = 7, 8, 9
MAX_IMAGE_SIZE = 1 << 30          # 1 GiB of virtual image is far beyond any guest app
MAX_FILE_SIZE = 64 << 20


class LoaderError(Exception):
    """An image the loader refuses; the message is one line for the user."""


@dataclass(frozen=True)
class Segment:
    """One PT_LOAD segment after relocation to the load base."""

    va: int
    memsz: int
    flags: int          # PF_R | PF_W | PF_X

    @property
    def end(self) -> int:
        return self.va + self.memsz


@dataclass
class Image:
    """A parsed, relocated image ready to map: page contents and per-page permissions."""

    path: str
    name: str
    base: int                            # load bias: 0 for ET_EXEC
    entry: int
    segments: list[Segment]
    pages: dict[int, bytearray] = field(default_factory=dict)   # page VA -> 4 KiB contents
    page_flags: dict[int, int] = field(default_factory=dict)    # page VA -> PF_* union
    symbols: dict[str, int] = field(default_factory=dict)       # name -> relocated address

    @property
    def low(self) -> int:
        return min(s.va for s in self.segments)

    @property
    def high(self) -> int:
        return max(s.end for s in self.segments)


def load_file(path: str | Path) -> Image:
    """Read and parse the ELF file at ``path``; raises LoaderError with a one-line reason."""
    p = Path(path)
    try:
        if p.stat().st_size > MAX_FILE_SIZE:
            raise LoaderError(f"{p}: file too large ({p.stat().st_size} bytes)")
        data = p.read_bytes()
    except FileNotFoundError:
        raise LoaderError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise LoaderError(f"{p}: is a directory, not an executable") from None
    except OSError as err:
        raise LoaderError(f"{p}: cannot read: {err.strerror}") from None
    return parse_image(data, str(p))


def parse_image(data: bytes, path: str = "<image>") -> Image:
    """Parse an ELF image held in memory (see load_file)."""
    _check_ident(data, path)
    try:
        return _parse(ELFFile(io.BytesIO(data)), data, path)
    except LoaderError:
        raise
    except (ELFError, struct.error, ValueError, KeyError, IndexError, AssertionError,
            TypeError, AttributeError, OverflowError, UnicodeDecodeError) as err:
        raise LoaderError(f"{path}: malformed ELF file ({_first_line(err)})") from None


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _check_ident(data: bytes, path: str) -> None:
    if len(data) < 4 or data[:4] != b"\x7fELF":
        raise LoaderError(f"{path}: not an ELF file")
    if len(data) < 64:
        raise LoaderError(f"{path}: truncated ELF header ({len(data)} bytes)")
    if data[4] == 1:
        raise LoaderError(f"{path}: 32-bit ELF file: 32-bit processes are not supported yet")
    if data[4] != 2:
        raise LoaderError(f"{path}: unknown ELF class {data[4]}")
    if data[5] != 1:
        raise LoaderError(f"{path}: big-endian ELF file: not an x86-64 executable")


def _parse(elf: ELFFile, data: bytes, path: str) -> Image:
    header = elf.header
    if header["e_machine"] != "EM_X86_64":
        raise LoaderError(f"{path}: not an x86-64 executable (machine {header['e_machine']})")
    kind = header["e_type"]
    if kind not in ("ET_EXEC", "ET_DYN"):
        raise LoaderError(f"{path}: not an executable (type {kind})")
    phoff, phnum, phentsize = header["e_phoff"], header["e_phnum"], header["e_phentsize"]
    if phnum == 0:
        raise LoaderError(f"{path}: no program headers")
    if phentsize != 56 or phoff + phnum * phentsize > len(data):
        raise LoaderError(f"{path}: truncated or malformed program headers")
    headers = [elf.get_segment(i).header for i in range(phnum)]
    if any(h["p_type"] == "PT_INTERP" for h in headers):
        raise LoaderError(f"{path}: dynamically linked (needs an interpreter); "
                          "only static executables can run")
    loads = [h for h in headers if h["p_type"] == "PT_LOAD" and h["p_memsz"] > 0]
    if not loads:
        raise LoaderError(f"{path}: no loadable segments")
    base = PIE_IMAGE_BASE - _align_down(min(h["p_vaddr"] for h in loads)) \
        if kind == "ET_DYN" else 0
    image = Image(path, Path(path).name, base, header["e_entry"] + base, [])
    for i, h in enumerate(loads):
        _add_segment(image, h, data, path, i)
    _check_overlaps(image, path)
    _check_entry(image, path)
    if kind == "ET_DYN":
        _relocate(elf, image, path)
    image.symbols = _symbols(elf, base)
    return image


def _align_down(v: int) -> int:
    return v & ~(PAGE_SIZE - 1)


def _add_segment(image: Image, h, data: bytes, path: str, i: int) -> None:
    va, memsz = h["p_vaddr"] + image.base, h["p_memsz"]
    filesz, offset = h["p_filesz"], h["p_offset"]
    where = f"{path}: segment {i} (0x{va:x}-0x{va + memsz:x})"
    if filesz > memsz:
        raise LoaderError(f"{where}: file size {filesz:#x} exceeds memory size {memsz:#x}")
    if offset + filesz > len(data):
        raise LoaderError(f"{where}: extends past the end of the file (truncated?)")
    if va < MM_LOWEST_USER_ADDRESS or va + memsz - 1 > MM_HIGHEST_USER_ADDRESS:
        raise LoaderError(f"{where}: outside the user address space "
                          f"(0x{MM_LOWEST_USER_ADDRESS:x}-0x{MM_HIGHEST_USER_ADDRESS:x})")
    if sum(s.memsz for s in image.segments) + memsz > MAX_IMAGE_SIZE:
        raise LoaderError(f"{where}: image larger than {MAX_IMAGE_SIZE >> 20} MiB")
    flags = h["p_flags"] & (PF_R | PF_W | PF_X)
    image.segments.append(Segment(va, memsz, flags))
    contents = data[offset:offset + filesz]
    for page in range(_align_down(va), va + memsz, PAGE_SIZE):
        image.pages.setdefault(page, bytearray(PAGE_SIZE))
        # Pages shared by two segments get the union of their permissions.
        image.page_flags[page] = image.page_flags.get(page, 0) | flags
    _copy_into_pages(image, va, contents)


def _copy_into_pages(image: Image, va: int, contents: bytes) -> None:
    pos = 0
    while pos < len(contents):
        page, off = _align_down(va + pos), (va + pos) % PAGE_SIZE
        n = min(PAGE_SIZE - off, len(contents) - pos)
        image.pages[page][off:off + n] = contents[pos:pos + n]
        pos += n


def _check_overlaps(image: Image, path: str) -> None:
    ordered = sorted(image.segments, key=lambda s: s.va)
    for a, b in zip(ordered, ordered[1:], strict=False):
        if b.va < a.end:
            raise LoaderError(f"{path}: segments 0x{a.va:x}-0x{a.end:x} and "
                              f"0x{b.va:x}-0x{b.end:x} overlap")


def _check_entry(image: Image, path: str) -> None:
    for s in image.segments:
        if s.va <= image.entry < s.end and s.flags & PF_X:
            return
    raise LoaderError(f"{path}: entry point 0x{image.entry:x} is not in an executable segment")


def _relocate(elf: ELFFile, image: Image, path: str) -> None:
    """Apply R_X86_64_RELATIVE relocations: the quadword at base+offset becomes base+addend."""
    for offset, rtype, addend in _rela_entries(elf, path):
        if rtype == R_X86_64_NONE:
            continue
        if rtype != R_X86_64_RELATIVE:
            raise LoaderError(f"{path}: unsupported relocation type {rtype} (only static-pie "
                              "images with R_X86_64_RELATIVE relocations can be loaded)")
        target = image.base + offset
        value = (image.base + addend) & 0xFFFF_FFFF_FFFF_FFFF
        for i, byte in enumerate(value.to_bytes(8, "little")):
            page = image.pages.get(_align_down(target + i))
            if page is None:
                raise LoaderError(f"{path}: relocation at 0x{target:x} is outside the image")
            page[(target + i) % PAGE_SIZE] = byte


def _rela_entries(elf: ELFFile, path: str) -> list[tuple[int, int, int]]:
    """(offset, type, addend) of every dynamic RELA entry, read via the PT_DYNAMIC segment."""
    entries: list[tuple[int, int, int]] = []
    for seg in elf.iter_segments():
        if seg.header["p_type"] != "PT_DYNAMIC":
            continue
        tags = {t.entry.d_tag: t.entry.d_val for t in seg.iter_tags()}
        rela, size = tags.get("DT_RELA"), tags.get("DT_RELASZ", 0)
        if rela is None or not size:
            continue
        if tags.get("DT_RELAENT", 24) != 24:
            raise LoaderError(f"{path}: malformed dynamic section (DT_RELAENT)")
        file_off = _vaddr_to_offset(elf, rela, size, path)
        stream = elf.stream
        stream.seek(file_off)
        raw = stream.read(size)
        if len(raw) != size or size % 24:
            raise LoaderError(f"{path}: relocation table truncated")
        for off in range(0, size, 24):
            r_offset, r_info, r_addend = struct.unpack_from("<QQq", raw, off)
            entries.append((r_offset, r_info & 0xFFFF_FFFF, r_addend))
    return entries


def _vaddr_to_offset(elf: ELFFile, vaddr: int, size: int, path: str) -> int:
    for seg in elf.iter_segments():
        h = seg.header
        if h["p_type"] == "PT_LOAD" and h["p_vaddr"] <= vaddr and \
                vaddr + size <= h["p_vaddr"] + h["p_filesz"]:
            return vaddr - h["p_vaddr"] + h["p_offset"]
    raise LoaderError(f"{path}: relocation table at 0x{vaddr:x} is not in a loaded segment")


def _symbols(elf: ELFFile, base: int) -> dict[str, int]:
    """Function and object symbols from .symtab, relocated (for traces and the debugger)."""
    table = elf.get_section_by_name(".symtab")
    if table is None or not hasattr(table, "iter_symbols"):
        return {}
    out: dict[str, int] = {}
    for sym in table.iter_symbols():
        if sym.name and sym["st_info"]["type"] in ("STT_FUNC", "STT_OBJECT", "STT_NOTYPE") \
                and sym["st_shndx"] != "SHN_UNDEF" and sym["st_value"]:
            out.setdefault(sym.name, sym["st_value"] + base)
    return out
