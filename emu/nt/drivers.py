"""Drivers: ELF64 shared objects (PE32+ .sys files: emu.nt.pe) loaded into the kernel half
and run at ring 0.

The loader (MmLoadSystemImage, reduced) maps a driver's PT_LOAD segments at a
kernel address it chooses, each page with its segment's permissions and
without the U/S bit, applies the dynamic relocations, and binds each undefined
symbol to a kernel export (emu.nt.exports); an import the kernel does not
export refuses the load, naming it. Then DriverEntry(DriverObject,
RegistryPath) runs at ring 0 in the system context. A fault there is not
contained: it is a bug check, and every process stops with the machine. When every
process has ended normally, each loaded driver's DriverUnload runs (``shutdown``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from emu.nt import exports, io, layout, ntos  # noqa: F401 (ntos registers the exports)
from emu.nt.events import Event
from emu.nt.loader import (
    PF_W,
    PF_X,
    ElfReader,
    LoaderError,
    Segment,
    add_pages,
    check_overlaps,
    copy_into_pages,
    dynamic_symbols,
    read_image_file,
    refuse_linux,
    symbol_table,
)
from emu.nt.mm.address_space import Protection
from emu.nt.mm.pfn import FrameUse

if TYPE_CHECKING:
    from emu.nt.kernel import Executive

R_X86_64_64, R_X86_64_GLOB_DAT, R_X86_64_JUMP_SLOT, R_X86_64_RELATIVE = 1, 6, 7, 8
R_X86_64_NONE = 0
MAX_DRIVERS = 64
_PROTECT = {(False, False): Protection.PAGE_READONLY, (True, False): Protection.PAGE_READWRITE,
            (False, True): Protection.PAGE_EXECUTE_READ,
            (True, True): Protection.PAGE_EXECUTE_READWRITE}


@dataclass
class DriverImage:
    """A driver file, parsed and relocated for its kernel base."""

    path: str
    name: str
    base: int
    entry: int                              # DriverEntry
    segments: list[Segment]
    pages: dict[int, bytearray]
    page_flags: dict[int, int]
    imports: list[str]
    symbols: dict[str, int] = field(default_factory=dict)
    discardable: set[int] = field(default_factory=set)   # pages freed after DriverEntry
    is_pe: bool = False                     # a PE .sys (emu.nt.pe), not an ELF driver
    functions: list = field(default_factory=list)   # .pdata: unwind.RuntimeFunction, sorted
    sections: list = field(default_factory=list)    # PE sections: pe.Section
    pdb: str = ""                           # the PDB its function names came from

    @property
    def end(self) -> int:
        return max(s.end for s in self.segments)


@dataclass
class Driver:
    """A loaded driver (the DRIVER_OBJECT it was given, and how DriverEntry ended)."""

    image: DriverImage
    driver_object: int
    status: int | None = None
    unloaded: bool = False


def parse_driver(data: bytes, path: str, base: int) -> DriverImage:
    """Parse and relocate a driver for ``base``; LoaderError with a one-line reason."""
    if data[:4] != b"\x7fELF":
        raise LoaderError(f"{path}: not an ELF file")
    if len(data) < 64 or data[4] != 2 or data[5] != 1:
        raise LoaderError(f"{path}: not an ELF64 little-endian file")
    try:
        elf = ElfReader(data)
        return _parse(elf, data, path, base)
    except LoaderError:
        raise
    except Exception as err:  # noqa: BLE001 - pyelftools raises many kinds on garbage
        raise LoaderError(f"{path}: malformed driver ({type(err).__name__})") from None


def _parse(elf: ElfReader, data: bytes, path: str, base: int) -> DriverImage:
    h = elf.header
    if h["e_machine"] != "EM_X86_64":
        raise LoaderError(f"{path}: not an x86-64 driver (machine {h['e_machine']})")
    refuse_linux(elf, elf.program_headers(), path)
    if h["e_type"] == "ET_EXEC":
        raise LoaderError(f"{path}: an app, not a driver (type ET_EXEC, not a shared "
                          "object): run it without --driver")
    if h["e_type"] != "ET_DYN":
        raise LoaderError(f"{path}: not a shared object (type {h['e_type']}); build drivers "
                          "with gcc -shared -fPIC")
    loads = [p for p in elf.program_headers() if p["p_type"] == "PT_LOAD" and p["p_memsz"]]
    if not loads:
        raise LoaderError(f"{path}: no loadable segments")
    image = DriverImage(path, Path(path).name, base, 0, [], {}, {}, [])
    image.segments = [_segment(image, p, data, path) for p in loads]
    check_overlaps(image.segments, path)      # so at most one 16 MiB slot is ever copied
    for seg, p in zip(image.segments, loads, strict=True):
        add_pages(image.pages, image.page_flags, seg.va, seg.memsz, seg.flags)
        copy_into_pages(image.pages, seg.va,
                        memoryview(data)[p["p_offset"]:p["p_offset"] + p["p_filesz"]])
    dynsym = dynamic_symbols(elf)                  # read once: symbols and relocations
    symbols, undefined = _dynamic_symbols(dynsym)
    image.symbols = {**symbol_table(elf, base),
                     **{name: base + value for name, value in symbols.items()}}
    if "DriverEntry" not in image.symbols and "_start" in image.symbols:
        raise LoaderError(f"{path}: an app, not a driver (it has _start and no DriverEntry): "
                          "run it without --driver")
    if "DriverEntry" not in image.symbols:
        raise LoaderError(f"{path}: no DriverEntry (the driver's entry point must be "
                          "exported)")
    image.entry = image.symbols["DriverEntry"]
    image.imports = sorted(set(undefined))
    unknown = [name for name in image.imports if exports.address_of(name) is None]
    if unknown:
        raise LoaderError(f"{path}: unknown import {unknown[0]} (the kernel does not export "
                          "it)")
    for offset, rtype, sym, addend in _relocations(elf, data, dynsym):
        _relocate(image, offset, rtype, sym, addend, path)
    return image


def _segment(image: DriverImage, p, data: bytes, path: str) -> Segment:
    """PT_LOAD ``p`` as a Segment at the driver's base, checked to fit its slot."""
    va, memsz, filesz, offset = image.base + p["p_vaddr"], p["p_memsz"], p["p_filesz"], \
        p["p_offset"]
    if filesz > memsz or offset + filesz > len(data) or p["p_vaddr"] + memsz > \
            layout.KERNEL_DRIVER_SLOT:
        raise LoaderError(f"{path}: segment at 0x{p['p_vaddr']:x} is malformed or too large")
    return Segment(va, memsz, p["p_flags"] & 7)


def _dynamic_symbols(dynsym: list[tuple[str, int, int]]) -> tuple[dict[str, int], list[str]]:
    """(defined name -> value, undefined names) from the .dynsym entries ``dynsym``."""
    entries = [e for e in dynsym[1:] if e[0]]     # entry 0 is the null symbol
    return ({name: value for name, shndx, value in entries if shndx},
            [name for name, shndx, _ in entries if not shndx])


def _relocations(elf: ElfReader, data: bytes, syms: list[tuple[str, int, int]]):
    """(offset, type, (name, shndx, value) | None, addend) of every RELA entry; ``syms``:
    the .dynsym entries, by symbol index."""
    for sec in elf.section_headers():
        if sec["sh_type"] != "SHT_RELA":
            continue
        table = data[sec["sh_offset"]:sec["sh_offset"] + sec["sh_size"]]
        for off in range(0, len(table) - 23, 24):
            r_offset, r_info, addend = struct.unpack_from("<QQq", table, off)
            index = r_info >> 32
            sym = syms[index] if 0 < index < len(syms) else None
            yield r_offset, r_info & 0xFFFF_FFFF, sym, addend


def _relocate(image: DriverImage, offset: int, rtype: int, sym, addend: int, path: str) -> None:
    if rtype == R_X86_64_NONE:
        return
    if rtype == R_X86_64_RELATIVE:
        value = image.base + addend
    elif rtype in (R_X86_64_64, R_X86_64_GLOB_DAT, R_X86_64_JUMP_SLOT) and sym is not None:
        name, shndx, sym_value = sym
        target = image.base + sym_value if shndx else exports.address_of(name)
        value = target + (addend if rtype == R_X86_64_64 else 0)
    else:
        raise LoaderError(f"{path}: unsupported relocation type {rtype}")
    at = image.base + offset
    raw = (value & 0xFFFF_FFFF_FFFF_FFFF).to_bytes(8, "little")
    for i in range(8):
        page = image.pages.get((at + i) & ~0xFFF)
        if page is None:
            raise LoaderError(f"{path}: relocation at 0x{offset:x} is outside the image")
        page[(at + i) & 0xFFF] = raw[i]


def load(ex: Executive, path: str | Path) -> DriverImage:
    """Read and parse a driver for the next free kernel slot (nothing mapped yet)."""
    p = Path(path)
    data = read_image_file(p)
    if len(ex.drivers) + len(ex.pending_drivers) >= MAX_DRIVERS:
        raise LoaderError(f"{p}: too many drivers (at most {MAX_DRIVERS})")
    slot = len(ex.drivers) + len(ex.pending_drivers)
    base = layout.KERNEL_DRIVERS + slot * layout.KERNEL_DRIVER_SLOT
    from emu.nt import pe  # imports this module, so loaded here

    if pe.is_pe(data):                      # a .sys as Windows builds it
        return pe.parse_pe_driver(data, str(p), base)
    return parse_driver(data, str(p), base)


def start(ex: Executive, image: DriverImage) -> Driver:
    """Map the image into the shared kernel half and run DriverEntry at ring 0 (IopLoadDriver).
    A failing DriverEntry unloads the driver; a successful one has its discardable pages
    freed; a fault in it is a bug check (raised)."""
    frames = []
    for va, contents in sorted(image.pages.items()):
        flags = image.page_flags[va]
        protect = _PROTECT[(bool(flags & PF_W), bool(flags & PF_X))]
        frames.append(ex.mm.map_new(ex.mm.system, va, protect, use=FrameUse.KERNEL,
                                    data=bytes(contents)))
    _watch_cr8_moves(ex, image)
    driver_object = ex.io.new_driver_object(image.base, image.end - image.base,
                                            default_dispatch=image.is_pe)
    registry = _registry_path(ex, image.name)
    driver = Driver(image, driver_object)
    ex.drivers.append(driver)
    ex.events.emit(Event.DRIVER_LOAD, driver=driver)
    status = ex.call_kernel(image.entry, driver_object, registry).rax & 0xFFFF_FFFF
    driver.status = status
    if status & 0x8000_0000:
        _free_pages(ex, image.pages)
        driver.unloaded = True
    else:
        # MmFreeDriverInitialization: once DriverEntry has succeeded, the sections marked
        # IMAGE_SCN_MEM_DISCARDABLE (INIT, .reloc) are freed; a later call into INIT code
        # is a fetch from a not-present page (PE Format, "Section Flags").
        _free_pages(ex, image.discardable)
    return driver


def _watch_cr8_moves(ex: Executive, image: DriverImage) -> None:
    """Let the CPU find the CR8 moves (the IRQL, emu.hw.cr8) in each run of the image's
    executable pages, once, before any of its code runs."""
    runs: list[tuple[int, bytearray]] = []
    for va in sorted(image.pages):
        if not image.page_flags[va] & PF_X:
            continue
        if runs and runs[-1][0] + len(runs[-1][1]) == va:
            runs[-1][1].extend(image.pages[va])
        else:
            runs.append((va, bytearray(image.pages[va])))
    for va, code in runs:
        ex.cpu.cr8.watch(va, bytes(code))


def _free_pages(ex: Executive, pages) -> None:
    """Unmap the driver pages ``pages`` from the shared kernel half (each PTE zeroed and its
    translation invalidated, as INVLPG does) and give their frames back to the free list;
    the CR8 moves of code there are hooked no more."""
    for va in sorted(pages):
        ex.cpu.cr8.unwatch(va, va + layout.PAGE_SIZE)
        pfn = ex.mm.system.unmap_page(va)
        if pfn is not None:
            ex.mm.pfn.release(pfn)


def unload_routine(ex: Executive, driver: Driver) -> int:
    """The DriverUnload routine the driver stored in its DRIVER_OBJECT (0: none); wdm.h's
    x64 layout for PE and ELF drivers alike (emu.nt.wdm)."""
    return ex.kernel_read_u64(driver.driver_object + io.DRIVER_UNLOAD)


def shutdown(ex: Executive) -> None:
    """A clean shutdown: the I/O manager calls DriverUnload(DriverObject) of each loaded
    driver that set one, in reverse load order, at PASSIVE_LEVEL in the system context; a
    fault there is a bug check (raised). A driver without DriverUnload is left as it is
    (Windows cannot unload it either)."""
    for driver in reversed(ex.drivers):
        if driver.unloaded:
            continue
        routine = unload_routine(ex, driver)
        if routine:
            ex.call_kernel(routine, driver.driver_object)


def _registry_path(ex: Executive, name: str) -> int:
    """A UNICODE_STRING for \\Registry\\Machine\\System\\CurrentControlSet\\Services\\NAME."""
    text = ("\\Registry\\Machine\\System\\CurrentControlSet\\Services\\"
            + name.rsplit(".", 1)[0]).encode("utf-16-le")
    buffer = ex.pools.allocate(0, len(text) + 2, 0x20676552)               # 'Reg '
    ex.write_user(ex.mm.system, buffer, text + b"\0\0")
    string = ex.pools.allocate(0, 16, 0x20676552)
    ex.write_user(ex.mm.system, string, struct.pack("<HHIQ", len(text), len(text) + 2, 0,
                                                    buffer))
    return string


def symbolize(ex: Executive, address: int) -> str:
    """``driver.sys!Function+0x1a`` (or ``driver.sys+0x1234``) for a code address in a loaded
    driver, as WinDbg names it; ``nt!memcpy`` for a kernel export's address; the bare address
    elsewhere."""
    driver = driver_at(ex, address)
    if driver is None:
        name = exports.name_at(address)
        return f"0x{address:x}" if name is None else f"nt!{name}"
    image = driver.image
    best = max(((value, name) for name, value in image.symbols.items() if value <= address),
               default=None)
    if best is None:
        return f"{image.name}+0x{address - image.base:x}"
    return f"{image.name}!{best[1]}+0x{address - best[0]:x}"


def driver_at(ex: Executive, address: int) -> Driver | None:
    """The loaded driver whose image contains ``address``."""
    for driver in ex.drivers:
        if driver.image.base <= address < driver.image.end and not driver.unloaded:
            return driver
    return None
