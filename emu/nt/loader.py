"""The image loader: static ELF executables for ring-3 processes (x86-64, and i386).

What it accepts (System V gABI and the x86-64 psABI):
- ET_EXEC: PT_LOAD segments at their link addresses, which must lie in the user half
  (below 2 GB for an ELF32 i386 image: a 32-bit process);
- ET_DYN static-pie: the same, moved to a base the loader chooses, with only
  R_X86_64_RELATIVE relocations (``*(base + offset) = base + addend``).
Each page gets the permissions of its segment's flags (no PF_X -> NX, no PF_W
-> read-only). Bytes past p_filesz up to p_memsz are zero (.bss).

Everything else is refused with one line that says what is wrong, because a
user who hands the machine a bad file made a mistake, not the emulator.
"""

from __future__ import annotations

import functools
import os
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.construct import ConstructError
from elftools.elf.structs import ELFStructs

from emu.nt.layout import (
    MM_HIGHEST_USER_ADDRESS,
    MM_HIGHEST_USER_ADDRESS_32,
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
    bits: int = 64                       # 32: an i386 image, run in compatibility mode

    @property
    def low(self) -> int:
        return min(s.va for s in self.segments)

    @property
    def high(self) -> int:
        return max(s.end for s in self.segments)


def highest_user_address(bits: int) -> int:
    """MmHighestUserAddress for a 64-bit process, or a 32-bit one (2 GB, as under WOW64)."""
    return MM_HIGHEST_USER_ADDRESS if bits == 64 else MM_HIGHEST_USER_ADDRESS_32


def load_file(path: str | Path) -> Image:
    """Read and parse the ELF file at ``path``; raises LoaderError with a one-line reason."""
    return parse_image(read_image_file(path), str(path))


_FILE_KINDS = ((stat.S_ISDIR, "is a directory, not an executable"),
               (stat.S_ISFIFO, "not a regular file (a FIFO)"),
               (stat.S_ISCHR, "not a regular file (a character device)"),
               (stat.S_ISBLK, "not a regular file (a block device)"),
               (stat.S_ISSOCK, "not a regular file (a socket)"))


def read_image_file(path: str | Path, limit: int = MAX_FILE_SIZE) -> bytes:
    """The bytes of the regular file at ``path``, at most ``limit`` of them; LoaderError
    for anything else (a FIFO or a device is refused before a byte is read, and no more
    than ``limit`` + 1 bytes are ever read, whatever the file claims its size is)."""
    p = Path(path)
    try:
        # O_NONBLOCK: opening a FIFO with no writer must not wait; a regular file ignores it.
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise LoaderError(f"{p}: no such file") from None
    except OSError as err:
        raise LoaderError(f"{p}: cannot read: {err.strerror}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        what = next((what for test, what in _FILE_KINDS if test(mode)), "not a regular file")
        raise LoaderError(f"{p}: {what}")
    data = bytearray()
    with os.fdopen(fd, "rb", buffering=0) as f:
        try:
            # A read may return less than asked before the end (procfs answers a page at a
            # time): read until the end or one byte past the limit, never further.
            while len(data) <= limit and (piece := f.read(limit + 1 - len(data))):
                data += piece
        except OSError as err:
            raise LoaderError(f"{p}: cannot read: {err.strerror}") from None
    if len(data) > limit:
        raise LoaderError(f"{p}: file too large (more than {limit >> 20} MiB)")
    return bytes(data)


def parse_image(data: bytes, path: str = "<image>") -> Image:
    """Parse an ELF image held in memory (see load_file)."""
    _check_ident(data, path)
    try:
        return _parse(ElfReader(data), data, path)
    except LoaderError:
        raise
    except (ELFError, ConstructError, struct.error, ValueError, KeyError, IndexError,
            AssertionError,
            TypeError, AttributeError, OverflowError, UnicodeDecodeError) as err:
        raise LoaderError(f"{path}: malformed ELF file ({_first_line(err)})") from None


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


# PE Format (Microsoft docs): e_lfanew at 0x3C, then "PE\0\0", the 20-byte COFF header and
# the optional header, whose Subsystem is at 68 in PE32 and PE32+ alike; 1 is native.
IMAGE_SUBSYSTEM_NATIVE = 1


def _pe_subsystem(data: bytes) -> int | None:
    """The Subsystem of an MZ file's PE optional header, or None if it has none."""
    if len(data) < 0x40:
        return None
    at = int.from_bytes(data[0x3C:0x40], "little")
    if data[at:at + 4] != b"PE\0\0" or len(data) < at + 24 + 70:
        return None
    return int.from_bytes(data[at + 24 + 68:at + 24 + 70], "little")


def _check_ident(data: bytes, path: str) -> None:
    if data[:2] == b"MZ" and _pe_subsystem(data) == IMAGE_SUBSYSTEM_NATIVE:
        raise LoaderError(f"{path}: this is a driver (a PE image of the native subsystem): "
                          "use --driver")
    if len(data) < 4 or data[:4] != b"\x7fELF":
        raise LoaderError(f"{path}: not an ELF file")
    if len(data) < 64:
        raise LoaderError(f"{path}: truncated ELF header ({len(data)} bytes)")
    if data[4] not in (1, 2):
        raise LoaderError(f"{path}: unknown ELF class {data[4]}")
    if data[5] != 1:
        raise LoaderError(f"{path}: big-endian ELF file: not an x86-64 executable")


@functools.cache
def _structs(bits: int, *kind) -> ELFStructs:
    """pyelftools' structure definitions for ELF``bits``, the advanced ones for ``kind``
    (e_type, e_machine, EI_OSABI) if given. Made once each: they only describe (parsing
    keeps no state in them), and making them was most of a small app's load."""
    structs = ELFStructs(little_endian=True, elfclass=bits)
    structs.create_basic_structs()
    if kind:
        structs.create_advanced_structs(*kind)
    return structs


class ElfReader:
    """The parts of an ELF64 file the loader reads, through pyelftools' structure
    definitions (ELFStructs: its ELFFile would also import the DWARF readers, a third of
    `emu run`'s start-up, which a loader does not need)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.bits = 32 if data[4] == 1 else 64
        self.header = _structs(self.bits).Elf_Ehdr.parse(data[:64])
        h = self.header
        self.structs = _structs(self.bits, h["e_type"], h["e_machine"],
                                h["e_ident"]["EI_OSABI"])
        self._phdrs: list | None = None
        self._shdrs: list | None = None

    def program_headers(self) -> list:
        """Every program header, parsed once (each from its own e_phentsize bytes: the
        work is linear in e_phnum, never a copy of the rest of the file per header)."""
        if self._phdrs is None:
            h = self.header
            off, size = h["e_phoff"], h["e_phentsize"]
            self._phdrs = [self.structs.Elf_Phdr.parse(self.data[off + i * size:
                                                                 off + (i + 1) * size])
                           for i in range(h["e_phnum"])]
        return self._phdrs

    def section_headers(self) -> list:
        """Every section header, parsed once; [] when the table is missing or malformed."""
        if self._shdrs is None:
            h = self.header
            size = 64 if self.bits == 64 else 40
            off = h["e_shoff"]
            if h["e_shentsize"] != size or off + h["e_shnum"] * size > len(self.data):
                self._shdrs = []
            else:
                self._shdrs = [self.structs.Elf_Shdr.parse(self.data[off + i * size:
                                                                     off + (i + 1) * size])
                               for i in range(h["e_shnum"])]
        return self._shdrs

    def dynamic_tags(self, segment) -> dict[str, int]:
        """d_tag -> d_val of the PT_DYNAMIC ``segment`` (up to DT_NULL)."""
        tags: dict[str, int] = {}
        start, size = segment["p_offset"], segment["p_filesz"]
        for off in range(start, min(start + size, len(self.data)) - 15, 16):
            entry = self.structs.Elf_Dyn.parse(self.data[off:off + 16])
            if entry["d_tag"] == "DT_NULL":
                break
            tags.setdefault(entry["d_tag"], entry["d_val"])
        return tags


def _parse(elf: ElfReader, data: bytes, path: str) -> Image:
    header = elf.header
    machine = "EM_X86_64" if elf.bits == 64 else "EM_386"
    if header["e_machine"] != machine:
        what = "an x86-64" if elf.bits == 64 else "a 32-bit x86 (i386)"
        raise LoaderError(f"{path}: not {what} executable (machine {header['e_machine']})")
    kind = header["e_type"]
    if kind not in ("ET_EXEC", "ET_DYN"):
        raise LoaderError(f"{path}: not an executable (type {kind})")
    if kind == "ET_DYN" and elf.bits == 32:
        raise LoaderError(f"{path}: 32-bit position-independent images are not supported")
    phoff, phnum, phentsize = header["e_phoff"], header["e_phnum"], header["e_phentsize"]
    if phnum == 0:
        raise LoaderError(f"{path}: no program headers")
    if phentsize != (56 if elf.bits == 64 else 32) or phoff + phnum * phentsize > len(data):
        raise LoaderError(f"{path}: truncated or malformed program headers")
    headers = elf.program_headers()
    _refuse_foreign(elf, headers, path)
    loads = [h for h in headers if h["p_type"] == "PT_LOAD" and h["p_memsz"] > 0]
    if not loads:
        raise LoaderError(f"{path}: no loadable segments")
    base = PIE_IMAGE_BASE - _align_down(min(h["p_vaddr"] for h in loads)) \
        if kind == "ET_DYN" else 0
    image = Image(path, Path(path).name, base, header["e_entry"] + base, [], bits=elf.bits)
    total = 0                   # bytes of image so far: one sum, kept as segments are added
    for i, h in enumerate(loads):
        total += h["p_memsz"]
        image.segments.append(_segment(image, h, data, path, i, total))
    check_overlaps(image.segments, path)
    _check_entry(image, path)
    # Only a good image gets pages: a refusal costs no memory beyond the headers.
    for seg, h in zip(image.segments, loads, strict=True):
        add_pages(image.pages, image.page_flags, seg.va, seg.memsz, seg.flags)
        copy_into_pages(image.pages, seg.va,
                        memoryview(data)[h["p_offset"]:h["p_offset"] + h["p_filesz"]])
    if kind == "ET_DYN":
        _relocate(elf, image, path)
    image.symbols = symbol_table(elf, base)
    return image


_NOT_SERVED = ("Linux system calls are not served: only guests built for this machine's ABI "
               "run (docs/abi.md; building one: guest/README.md)")
ELFOSABI_GNU = 3                  # gABI e_ident[EI_OSABI]: "UNIX - GNU" (Linux)
NT_GNU_ABI_TAG = 1                # the note glibc's crt1 carries (owner "GNU": OS, version)


def refuse_linux(elf: ElfReader, headers: list, path: str) -> None:
    """LoaderError if the file is a Linux program (an interpreter, the GNU OS/ABI, glibc's
    ABI tag note): its system calls would never be served here."""
    if any(h["p_type"] == "PT_INTERP" for h in headers):
        raise LoaderError(f"{path}: a dynamically linked Linux executable (it asks for an "
                          f"interpreter): {_NOT_SERVED}")
    if elf.data[7] == ELFOSABI_GNU:
        raise LoaderError(f"{path}: a Linux executable (ELF OS/ABI GNU/Linux): {_NOT_SERVED}")
    if any(h["p_type"] == "PT_NOTE" and _has_gnu_abi_tag(elf.data, h) for h in headers):
        raise LoaderError(f"{path}: a Linux executable (a GNU ABI tag note): {_NOT_SERVED}")


def _refuse_foreign(elf: ElfReader, headers: list, path: str) -> None:
    """LoaderError naming what a file is when it is not an app for this machine: a Linux
    program, or an ELF driver of the retired kind (no door takes it: --driver loads PE
    images only)."""
    refuse_linux(elf, headers, path)
    if elf.header["e_type"] == "ET_DYN" and any(
            name == "DriverEntry" and shndx for name, shndx, _ in dynamic_symbols(elf)):
        raise LoaderError(f"{path}: an ELF shared object exporting DriverEntry: ELF drivers are "
                          "not supported (drivers are PE32+ .sys files: docs/drivers.md)")


def _has_gnu_abi_tag(data: bytes, h) -> bool:
    """Whether the PT_NOTE segment ``h`` holds an NT_GNU_ABI_TAG note owned by "GNU"
    (gABI: each note is namesz, descsz, type, then name and desc, padded to p_align)."""
    align = 8 if h["p_align"] == 8 else 4
    off, end = h["p_offset"], min(h["p_offset"] + h["p_filesz"], len(data))
    while off + 12 <= end:
        namesz, descsz, ntype = struct.unpack_from("<III", data, off)
        name = data[off + 12:off + 12 + namesz]
        if ntype == NT_GNU_ABI_TAG and name == b"GNU\0":
            return True
        off += 12 + -(-namesz // align) * align + -(-descsz // align) * align
    return False


def dynamic_symbols(elf: ElfReader) -> list[tuple[str, int, int]]:
    """(name, section index, value) of every .dynsym entry, by symbol index ([] without)."""
    sections = elf.section_headers()
    data = elf.data
    for sec in sections:
        if sec["sh_type"] == "SHT_DYNSYM" and 0 <= sec["sh_link"] < len(sections) and \
                elf.bits == 64:
            strtab = sections[sec["sh_link"]]
            strings = data[strtab["sh_offset"]:strtab["sh_offset"] + strtab["sh_size"]]
            table = data[sec["sh_offset"]:sec["sh_offset"] + sec["sh_size"]]
            out = []
            for off in range(0, len(table) - 23, 24):     # Elf64_Sym
                name_off, _, _, shndx, value, _ = struct.unpack_from("<IBBHQQ", table, off)
                end = strings.find(b"\0", name_off)
                out.append((strings[name_off:end].decode("utf-8", "replace"), shndx, value))
            return out
    return []


def _align_down(v: int) -> int:
    return v & ~(PAGE_SIZE - 1)


def _segment(image: Image, h, data: bytes, path: str, i: int, total: int) -> Segment:
    """PT_LOAD ``h`` (the i-th) as a Segment, checked; ``total``: the image's size with it."""
    va, memsz = h["p_vaddr"] + image.base, h["p_memsz"]
    filesz, offset = h["p_filesz"], h["p_offset"]
    where = f"{path}: segment {i} (0x{va:x}-0x{va + memsz:x})"
    if filesz > memsz:
        raise LoaderError(f"{where}: file size {filesz:#x} exceeds memory size {memsz:#x}")
    if offset + filesz > len(data):
        raise LoaderError(f"{where}: extends past the end of the file (truncated?)")
    highest = highest_user_address(image.bits)
    if va < MM_LOWEST_USER_ADDRESS or va + memsz - 1 > highest:
        raise LoaderError(f"{where}: outside the user address space "
                          f"(0x{MM_LOWEST_USER_ADDRESS:x}-0x{highest:x})")
    if total > MAX_IMAGE_SIZE:
        raise LoaderError(f"{where}: image larger than {MAX_IMAGE_SIZE >> 20} MiB")
    return Segment(va, memsz, h["p_flags"] & (PF_R | PF_W | PF_X))


def add_pages(pages: dict[int, bytearray], page_flags: dict[int, int], va: int, memsz: int,
              flags: int) -> None:
    """Zeroed pages for [va, va + memsz), each with ``flags`` added to its permissions."""
    for page in range(_align_down(va), va + memsz, PAGE_SIZE):
        pages.setdefault(page, bytearray(PAGE_SIZE))
        # Pages shared by two segments get the union of their permissions.
        page_flags[page] = page_flags.get(page, 0) | flags


def copy_into_pages(pages: dict[int, bytearray], va: int, contents) -> None:
    """Copy ``contents`` (bytes or a memoryview) to ``va`` in ``pages``, a page at a time."""
    pos = 0
    while pos < len(contents):
        page, off = _align_down(va + pos), (va + pos) % PAGE_SIZE
        n = min(PAGE_SIZE - off, len(contents) - pos)
        pages[page][off:off + n] = contents[pos:pos + n]
        pos += n


def check_overlaps(segments: list[Segment], path: str) -> None:
    """LoaderError if two segments share a byte (sorted once: n log n for n segments)."""
    ordered = sorted(segments, key=lambda s: s.va)
    for a, b in zip(ordered, ordered[1:], strict=False):
        if b.va < a.end:
            raise LoaderError(f"{path}: segments 0x{a.va:x}-0x{a.end:x} and "
                              f"0x{b.va:x}-0x{b.end:x} overlap")


def _check_entry(image: Image, path: str) -> None:
    for s in image.segments:
        if s.va <= image.entry < s.end and s.flags & PF_X:
            return
    raise LoaderError(f"{path}: entry point 0x{image.entry:x} is not in an executable segment")


def _relocate(elf: ElfReader, image: Image, path: str) -> None:
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


def _rela_entries(elf: ElfReader, path: str) -> list[tuple[int, int, int]]:
    """(offset, type, addend) of every dynamic RELA entry, read via the PT_DYNAMIC segment."""
    entries: list[tuple[int, int, int]] = []
    headers = elf.program_headers()
    for seg in headers:
        if seg["p_type"] != "PT_DYNAMIC":
            continue
        tags = elf.dynamic_tags(seg)
        rela, size = tags.get("DT_RELA"), tags.get("DT_RELASZ", 0)
        if rela is None or not size:
            continue
        if tags.get("DT_RELAENT", 24) != 24:
            raise LoaderError(f"{path}: malformed dynamic section (DT_RELAENT)")
        file_off = _vaddr_to_offset(headers, rela, size, path)
        raw = elf.data[file_off:file_off + size]
        if len(raw) != size or size % 24:
            raise LoaderError(f"{path}: relocation table truncated")
        for off in range(0, size, 24):
            r_offset, r_info, r_addend = struct.unpack_from("<QQq", raw, off)
            entries.append((r_offset, r_info & 0xFFFF_FFFF, r_addend))
    return entries


def _vaddr_to_offset(headers: list, vaddr: int, size: int, path: str) -> int:
    for h in headers:
        if h["p_type"] == "PT_LOAD" and h["p_vaddr"] <= vaddr and \
                vaddr + size <= h["p_vaddr"] + h["p_filesz"]:
            return vaddr - h["p_vaddr"] + h["p_offset"]
    raise LoaderError(f"{path}: relocation table at 0x{vaddr:x} is not in a loaded segment")


def symbol_table(elf: ElfReader, base: int) -> dict[str, int]:
    """Function and object symbols from .symtab, relocated (for traces and the debugger)."""
    sections = elf.section_headers()
    data = elf.data
    out: dict[str, int] = {}
    entsize = 24 if elf.bits == 64 else 16
    for sec in sections:
        if sec["sh_type"] != "SHT_SYMTAB" or sec["sh_entsize"] != entsize or \
                not 0 <= sec["sh_link"] < len(sections):
            continue
        strtab = sections[sec["sh_link"]]
        strings = data[strtab["sh_offset"]:strtab["sh_offset"] + strtab["sh_size"]]
        table = data[sec["sh_offset"]:sec["sh_offset"] + sec["sh_size"]]
        for off in range(0, len(table) - entsize + 1, entsize):
            if elf.bits == 64:     # Elf64_Sym: name, info, other, shndx, value, size
                name_off, info, _, shndx, value, _ = struct.unpack_from("<IBBHQQ", table, off)
            else:                  # Elf32_Sym: name, value, size, info, other, shndx
                name_off, value, _, info, _, shndx = struct.unpack_from("<IIIBBH", table, off)
            kind = info & 0xF                     # STT_NOTYPE 0, STT_OBJECT 1, STT_FUNC 2
            if kind > 2 or shndx == 0 or not value or name_off >= len(strings):
                continue
            end = strings.find(b"\0", name_off)
            name = strings[name_off:end if end >= 0 else None].decode("utf-8", "replace")
            if name:
                out.setdefault(name, value + base)
    return out
