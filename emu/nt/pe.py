"""PE drivers: PE32+ native images (``.sys`` files as Windows builds them) for the kernel half.

The loader (MmLoadSystemImage, reduced) takes what ``pefile`` parses and checks it the
way Windows' loader must before it trusts a byte: an AMD64 PE32+ image of the native
subsystem, headers and sections inside the file and the image, sections in ascending
order without overlap, relocations and imports that point into the image. Then it lays
the image out for the kernel slot emu.nt.drivers gave it (a DriverImage, mapped by
drivers.start with these page protections):
- the headers read-only, each section with the rights its characteristics give
  (IMAGE_SCN_MEM_EXECUTE -> executable, IMAGE_SCN_MEM_WRITE -> writable, else read-only;
  every page not executable is NX);
- base relocations applied (IMAGE_REL_BASED_DIR64) when the slot is not the image's
  preferred base; an image linked without them (IMAGE_FILE_RELOCS_STRIPPED) is refused;
- each import bound by (DLL, name) to a kernel export's trap address (emu.nt.exports),
  through the import address table; an import the kernel does not export to PE drivers
  refuses the load, naming DLL and name, as Windows refuses to start such a driver;
- the load configuration's ``__security_cookie``, if it names one, given a fresh value.
Every refusal is a LoaderError with one line that names the problem.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

import pefile
import purepdb

from emu.nt import exports, layout, ntos, unwind  # noqa: F401 (ntos registers the exports)
from emu.nt.loaded_modules import DriverImage
from emu.nt.loader import PF_R, PF_W, PF_X, LoaderError, Segment


class _NoFullCollection:
    """What pefile sees as its ``gc`` module. ``pefile.PE.close`` (run on every image it
    refuses) ends with a full ``gc.collect()`` to free the file it mapped; the loader hands
    it bytes, never a file, so that collection frees nothing of its own, and in a long
    session (the debugger, a fuzz run) it walks every object the process holds. Python's
    own collector runs as ever."""

    @staticmethod
    def collect(generation: int = 2) -> int:
        """Collect nothing; report nothing collected."""
        return 0


pefile.gc = _NoFullCollection

# PE format (Microsoft's "PE Format" specification).
IMAGE_FILE_MACHINE_I386, IMAGE_FILE_MACHINE_AMD64 = 0x014C, 0x8664
IMAGE_FILE_MACHINE_ARM64, IMAGE_FILE_MACHINE_ARMNT = 0xAA64, 0x01C4
IMAGE_NT_OPTIONAL_HDR64_MAGIC = 0x20B
IMAGE_FILE_RELOCS_STRIPPED, IMAGE_FILE_EXECUTABLE_IMAGE = 0x0001, 0x0002
IMAGE_SUBSYSTEM_NATIVE = 1
IMAGE_SCN_MEM_EXECUTE, IMAGE_SCN_MEM_WRITE = 0x2000_0000, 0x8000_0000
IMAGE_SCN_MEM_DISCARDABLE = 0x0200_0000
IMAGE_REL_BASED_ABSOLUTE, IMAGE_REL_BASED_DIR64 = 0, 10
IMAGE_ORDINAL_FLAG64 = 1 << 63
DIRECTORY_EXPORT, DIRECTORY_IMPORT, DIRECTORY_BASERELOC, DIRECTORY_LOAD_CONFIG = 0, 1, 5, 10
DIRECTORY_EXCEPTION, DIRECTORY_DEBUG = 3, 6
IMAGE_DEBUG_TYPE_CODEVIEW = 2
# "The loader limits the number of sections to 96" (PE Format, COFF File Header).
MAX_SECTIONS = 96
MAX_FILE_SIZE = 64 << 20
# The value MSVC's and mingw-w64's CRTs link __security_cookie with; the loader replaces it
# (gs_support.c: DEFAULT_SECURITY_COOKIE).
DEFAULT_SECURITY_COOKIE = 0x0000_2B99_2DDF_A232

_MACHINES = {IMAGE_FILE_MACHINE_I386: "a 32-bit (i386) image",
             IMAGE_FILE_MACHINE_ARM64: "an ARM64 image",
             IMAGE_FILE_MACHINE_ARMNT: "an ARM (32-bit) image"}
_SUBSYSTEMS = {2: "Windows GUI", 3: "Windows console", 5: "OS/2 console", 7: "POSIX console",
               9: "Windows CE", 10: "EFI application", 11: "EFI boot service driver",
               12: "EFI runtime driver", 14: "Xbox", 16: "Windows boot application"}


def is_pe(data: bytes) -> bool:
    """True if ``data`` starts as a PE image does (the MZ of its DOS header)."""
    return data[:2] == b"MZ"


def parse_pe_driver(data: bytes, path: str, base: int) -> DriverImage:
    """Parse, relocate and bind a PE32+ driver for ``base``; LoaderError with a one-line
    reason for anything Windows would not load."""
    if len(data) > MAX_FILE_SIZE:
        raise LoaderError(f"{path}: file of {len(data)} bytes is larger than the "
                          f"{MAX_FILE_SIZE >> 20} MiB a driver may be")
    # The DOS header's e_lfanew names the PE signature; the COFF header after it gives the
    # sizes of the optional header and the section table: a file that ends before their end
    # is cut short, not "not PE".
    if len(data) < 64:
        raise LoaderError(f"{path}: truncated headers (the file ends inside the DOS header)")
    (lfanew,) = struct.unpack_from("<I", data, 0x3C)
    if data[lfanew:lfanew + 4] == b"PE\0\0":
        sections, optional = (struct.unpack_from("<H", data, lfanew + at)[0]
                              if len(data) >= lfanew + 24 else 0 for at in (6, 20))
        if len(data) < lfanew + 24 + optional + 40 * sections:
            raise LoaderError(f"{path}: truncated headers (the file ends inside them)")
    try:
        pe = pefile.PE(data=data, fast_load=True)
    except pefile.PEFormatError as err:
        raise LoaderError(f"{path}: not a PE image ({str(err.value).rstrip('.')})") from None
    try:
        return _Loader(pe, data, path, base).load()
    except LoaderError:
        raise
    except Exception as err:  # noqa: BLE001 - pefile raises many kinds on garbage
        raise LoaderError(f"{path}: malformed PE image ({type(err).__name__})") from None


@dataclass(frozen=True)
class Section:
    """A PE section as mapped: name, address, virtual size, rights (PF_R/W/X), and whether
    it is discardable (freed after DriverEntry)."""

    name: str
    va: int
    size: int
    flags: int
    discardable: bool

    @property
    def rights(self) -> str:
        """``r-x``, ``r--``, ``rw-``: what its pages allow."""
        return "r" + ("w" if self.flags & PF_W else "-") + ("x" if self.flags & PF_X else "-")


def _align(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


class _Loader:
    """One load: the checks, then the image's pages, relocations, imports and cookie."""

    def __init__(self, pe: pefile.PE, data: bytes, path: str, base: int) -> None:
        self.pe, self.data, self.path, self.base = pe, data, path, base
        self.opt = pe.OPTIONAL_HEADER
        self.image = DriverImage(path, Path(path).name, base, 0, [], {}, {}, [], is_pe=True)

    def refuse(self, problem: str) -> LoaderError:
        return LoaderError(f"{self.path}: {problem}")

    def load(self) -> DriverImage:
        self._check_headers()
        self._map_headers()
        self._map_sections()
        self.pe.parse_data_directories(directories=[DIRECTORY_EXPORT, DIRECTORY_IMPORT,
                                                    DIRECTORY_BASERELOC,
                                                    DIRECTORY_LOAD_CONFIG])
        self._relocate()
        self._bind_imports()
        self._init_security_cookie()
        self._entry_and_symbols()
        self._exception_directory()
        self._pdb_symbols()
        return self.image

    # -- headers and sections -------------------------------------------------------------

    def _check_headers(self) -> None:
        fh, opt = self.pe.FILE_HEADER, self.opt
        if fh.Machine != IMAGE_FILE_MACHINE_AMD64:
            what = _MACHINES.get(fh.Machine, f"machine 0x{fh.Machine:x}")
            raise self.refuse(f"{what}, not AMD64: drivers here are x64 PE32+ images")
        if opt.Magic != IMAGE_NT_OPTIONAL_HDR64_MAGIC:
            raise self.refuse(f"optional header magic 0x{opt.Magic:x}, not PE32+ (0x20b)")
        # The headers as the file declares them must be in the file: signature, COFF
        # header, optional header, section table.
        table = self.pe.DOS_HEADER.e_lfanew + 4 + 20 + fh.SizeOfOptionalHeader
        table_end = table + 40 * fh.NumberOfSections
        if fh.SizeOfOptionalHeader < 112 + 8 * min(opt.NumberOfRvaAndSizes, 16) or \
                table_end > len(self.data) or opt.SizeOfHeaders > len(self.data):
            raise self.refuse("truncated headers (the file ends inside them)")
        if not fh.Characteristics & IMAGE_FILE_EXECUTABLE_IMAGE:
            raise self.refuse("not an executable image (IMAGE_FILE_EXECUTABLE_IMAGE is clear)")
        if opt.Subsystem != IMAGE_SUBSYSTEM_NATIVE:
            name = _SUBSYSTEMS.get(opt.Subsystem, "unknown")
            raise self.refuse(f"subsystem {opt.Subsystem} ({name}), not native (1): a "
                              "user-mode EXE/DLL is not a driver (link with "
                              "--subsystem,native)")
        if not 1 <= fh.NumberOfSections <= MAX_SECTIONS:
            raise self.refuse(f"{fh.NumberOfSections} sections (1 to {MAX_SECTIONS} allowed)")
        if opt.SectionAlignment < layout.PAGE_SIZE or opt.SectionAlignment % layout.PAGE_SIZE:
            raise self.refuse(f"section alignment 0x{opt.SectionAlignment:x} is not a "
                              "multiple of the page size: each section needs pages of its own "
                              "rights")
        if not 0 < opt.SizeOfImage <= layout.KERNEL_DRIVER_SLOT:
            raise self.refuse(f"image size 0x{opt.SizeOfImage:x} (a driver slot holds 1 byte "
                              f"to {layout.KERNEL_DRIVER_SLOT >> 20} MiB)")
        if not table_end <= opt.SizeOfHeaders <= opt.SizeOfImage:
            raise self.refuse(f"size of headers 0x{opt.SizeOfHeaders:x} does not hold the "
                              "section table or exceeds the image")

    def _map(self, rva: int, size: int, contents: bytes, flags: int) -> None:
        """Pages for [rva, rva + size) of the image, ``contents`` at their start."""
        va = self.base + rva
        self.image.segments.append(Segment(va, size, flags))
        for page in range(va, va + size, layout.PAGE_SIZE):
            self.image.pages[page] = bytearray(layout.PAGE_SIZE)
            self.image.page_flags[page] = flags
        for i in range(0, len(contents), layout.PAGE_SIZE):
            chunk = contents[i:i + layout.PAGE_SIZE]
            self.image.pages[va + i][:len(chunk)] = chunk

    def _map_headers(self) -> None:
        size = self.opt.SizeOfHeaders
        self._map(0, _align(size, layout.PAGE_SIZE), self.data[:size], PF_R)

    def _map_sections(self) -> None:
        opt, previous_end = self.opt, _align(self.opt.SizeOfHeaders, self.opt.SectionAlignment)
        # In the section table's order: pefile sorts its list by address, which would let a
        # table out of ascending order through.
        for section in sorted(self.pe.sections, key=lambda s: s.get_file_offset()):
            name = section.Name.rstrip(b"\0").decode("ascii", "replace") or "(unnamed)"
            rva, raw = section.VirtualAddress, section.SizeOfRawData
            size = section.Misc_VirtualSize or raw
            end = rva + _align(size, opt.SectionAlignment)
            if rva % opt.SectionAlignment:
                raise self.refuse(f"section {name} at RVA 0x{rva:x} is not aligned to the "
                                  f"section alignment 0x{opt.SectionAlignment:x}")
            if size == 0 or size > layout.KERNEL_DRIVER_SLOT or end > opt.SizeOfImage:
                raise self.refuse(f"section {name} (RVA 0x{rva:x}, size 0x{size:x}) lies "
                                  f"outside the image (size 0x{opt.SizeOfImage:x})")
            if rva < previous_end:
                raise self.refuse(f"section {name} at RVA 0x{rva:x} overlaps the headers or "
                                  "the section before it")
            offset = section.PointerToRawData
            if raw and offset + raw > len(self.data):
                raise self.refuse(f"section {name}'s data (file offset 0x{offset:x}, 0x{raw:x} "
                                  "bytes) runs past the end of the file: truncated")
            ch = section.Characteristics
            flags = PF_R | (PF_W if ch & IMAGE_SCN_MEM_WRITE else 0) | \
                (PF_X if ch & IMAGE_SCN_MEM_EXECUTE else 0)
            contents = self.data[offset:offset + min(raw, size)] if raw else b""
            self._map(rva, end - rva, contents, flags)
            self.image.sections.append(Section(name, self.base + rva, size, flags,
                                               bool(ch & IMAGE_SCN_MEM_DISCARDABLE)))
            if ch & IMAGE_SCN_MEM_DISCARDABLE:           # INIT, .reloc: freed after DriverEntry
                self.image.discardable.update(range(self.base + rva, self.base + end,
                                                    layout.PAGE_SIZE))
            previous_end = end

    def _inside(self, rva: int, size: int) -> bool:
        """Every byte of [rva, rva + size) is mapped (headers or a section)."""
        if rva < 0 or rva + size > self.opt.SizeOfImage:
            return False
        first, last = self.base + rva, self.base + rva + size - 1
        return all(page in self.image.pages for page in
                                range(first & ~0xFFF, (last & ~0xFFF) + 1, layout.PAGE_SIZE))

    def _directory(self, index: int, what: str) -> tuple[int, int]:
        """(RVA, size) of data directory ``index``; it must lie in the mapped image."""
        dirs = self.opt.DATA_DIRECTORY
        if index >= len(dirs) or not dirs[index].Size:
            return 0, 0
        rva, size = dirs[index].VirtualAddress, dirs[index].Size
        if not self._inside(rva, size):
            raise self.refuse(f"the {what} directory (RVA 0x{rva:x}, 0x{size:x} bytes) lies "
                              "outside the image")
        return rva, size

    def _read(self, rva: int, size: int) -> bytes:
        va = self.base + rva
        return bytes(self.image.pages[(va + i) & ~0xFFF][(va + i) & 0xFFF] for i in range(size))

    def _write(self, rva: int, raw: bytes) -> None:
        va = self.base + rva
        for i, byte in enumerate(raw):
            self.image.pages[(va + i) & ~0xFFF][(va + i) & 0xFFF] = byte

    # -- relocations, imports, cookie, entry -----------------------------------------------

    def _relocate(self) -> None:
        """Apply the base relocations for the load base (PE Format, ".reloc Section")."""
        rva, size = self._directory(DIRECTORY_BASERELOC, "base relocation")
        delta = self.base - self.opt.ImageBase
        if not size:
            # No relocation directory: the image has nothing to fix up, unless the linker
            # said it stripped them, and then it can only load at its preferred base.
            if delta and self.pe.FILE_HEADER.Characteristics & IMAGE_FILE_RELOCS_STRIPPED:
                raise self.refuse(f"relocations stripped (IMAGE_FILE_RELOCS_STRIPPED), but "
                                  f"it must load at 0x{self.base:x}, not its preferred base "
                                  f"0x{self.opt.ImageBase:x}")
            return
        blocks = getattr(self.pe, "DIRECTORY_ENTRY_BASERELOC", [])
        if sum(b.struct.SizeOfBlock for b in blocks) != size or any(
                b.struct.SizeOfBlock < 8 or len(b.entries) != (b.struct.SizeOfBlock - 8) // 2
                for b in blocks):
            raise self.refuse("malformed base relocation blocks (they do not fill the "
                              "directory)")
        for block in blocks:
            for entry in block.entries:
                if entry.type == IMAGE_REL_BASED_ABSOLUTE:          # padding
                    continue
                if entry.type != IMAGE_REL_BASED_DIR64:
                    raise self.refuse(f"relocation type {entry.type} at RVA 0x{entry.rva:x} "
                                      "(only IMAGE_REL_BASED_DIR64 applies to x64 images)")
                if not self._inside(entry.rva, 8):
                    raise self.refuse(f"relocation at RVA 0x{entry.rva:x} points outside the "
                                      "image")
                if delta:
                    (value,) = struct.unpack("<Q", self._read(entry.rva, 8))
                    self._write(entry.rva, struct.pack("<Q", (value + delta) % (1 << 64)))

    def _bind_imports(self) -> None:
        """Write each import's export address into its import address table slot."""
        rva, size = self._directory(DIRECTORY_IMPORT, "import")
        entries = getattr(self.pe, "DIRECTORY_ENTRY_IMPORT", [])
        # The descriptors run to an all-zero one; pefile skips one it cannot read.
        count = 0
        while 20 * (count + 1) <= size and self._read(rva + 20 * count, 20) != bytes(20):
            count += 1
        if count != len(entries):
            raise self.refuse(f"malformed import directory: {len(entries)} of its {count} "
                              "descriptors readable (a name or table outside the image)")
        for entry in entries:
            dll = (entry.dll or b"").decode("ascii", "replace")
            for field in ("Name", "OriginalFirstThunk", "FirstThunk"):
                rva = getattr(entry.struct, field)
                if (rva or field != "OriginalFirstThunk") and not self._inside(rva, 1):
                    raise self.refuse(f"import descriptor of {dll or '?'}: {field} points "
                                      "outside the image")
            if dll.lower() not in exports.PE_DLLS:
                raise self.refuse(f"imports from {dll}, which is not loaded (drivers bind to "
                                  "ntoskrnl.exe and hal.dll): STATUS_DLL_NOT_FOUND")
            slots = 0
            while self._inside(entry.struct.FirstThunk + 8 * slots, 8) and \
                    self._read(entry.struct.FirstThunk + 8 * slots, 8) != bytes(8):
                slots += 1
            if slots != len(entry.imports):
                raise self.refuse(f"malformed imports from {dll} ({len(entry.imports)} names "
                                  f"for {slots} import address table slots)")
            for imp in entry.imports:
                if imp.import_by_ordinal or not imp.name:
                    raise self.refuse(f"imports {dll} ordinal {imp.ordinal}: drivers bind by "
                                      "name")
                name = imp.name.decode("ascii", "replace")
                address = exports.pe_address_of(dll, name)
                if address is None:
                    raise self.refuse(f"unknown import {dll}!{name} (the kernel does not "
                                      "export it to PE drivers): STATUS_PROCEDURE_NOT_FOUND")
                slot = imp.address - self.opt.ImageBase
                if not self._inside(slot, 8):
                    raise self.refuse(f"import {dll}!{name}: its address table slot lies "
                                      "outside the image")
                self._write(slot, struct.pack("<Q", address))
                self.image.imports.append(name)

    def _init_security_cookie(self) -> None:
        """Give ``__security_cookie`` its value, as the loader does for /GS code."""
        self._directory(DIRECTORY_LOAD_CONFIG, "load configuration")
        config = getattr(self.pe, "DIRECTORY_ENTRY_LOAD_CONFIG", None)
        cookie_va = getattr(getattr(config, "struct", None), "SecurityCookie", 0)
        if not cookie_va:
            return
        rva = cookie_va - self.opt.ImageBase
        if not self._inside(rva, 8) or not self.image.page_flags[(self.base + rva) & ~0xFFF] \
                & PF_W:
            raise self.refuse(f"security cookie at 0x{cookie_va:x} is not in the image's "
                              "writable data")
        # Deterministic (every run the same), never the default, and zero in the top 16
        # bits as Windows' x64 cookies are (a string overrun cannot forge them).
        digest = hashlib.sha256(f"{self.image.name}@{self.base:x}".encode()).digest()
        cookie = int.from_bytes(digest[:6], "little")
        if cookie in (0, DEFAULT_SECURITY_COOKIE):
            cookie ^= 0x1234
        self._write(rva, struct.pack("<Q", cookie))

    def _entry_and_symbols(self) -> None:
        entry = self.opt.AddressOfEntryPoint
        page = (self.base + entry) & ~0xFFF
        # AddressOfEntryPoint 0 means "no entry point" (PE Format, "Optional Header
        # Standard Fields": optional for DLLs); a driver's entry point is its DriverEntry,
        # so an image without one is refused before any of it runs.
        if not entry:
            raise self.refuse("no DriverEntry (AddressOfEntryPoint is 0)")
        if not self._inside(entry, 1) or not self.image.page_flags[page] & PF_X:
            raise self.refuse(f"entry point RVA 0x{entry:x} is not in an executable section")
        self.image.entry = self.base + entry
        symbols = {}
        export_dir = getattr(self.pe, "DIRECTORY_ENTRY_EXPORT", None)
        for sym in getattr(export_dir, "symbols", []):
            if sym.name and sym.address and self._inside(sym.address, 1):
                symbols[sym.name.decode("ascii", "replace")] = self.base + sym.address
        if self.image.entry not in symbols.values():
            symbols["DriverEntry"] = self.image.entry
        self.image.symbols = symbols

    def _exception_directory(self) -> None:
        """Keep the .pdata RUNTIME_FUNCTIONs for unwinding (emu.nt.unwind, emu.nt.seh);
        entries must lie in the image ("x64 exception handling", "Struct RUNTIME_FUNCTION")."""
        rva, size = self._directory(DIRECTORY_EXCEPTION, "exception")
        if not size:
            return
        table = unwind.read_function_table(self._read(rva, size - size % 12), self.base)
        end = self.base + self.opt.SizeOfImage
        for function in table:
            if function.end > end or function.unwind_info + 4 > end:
                raise self.refuse(f"exception directory entry for RVA "
                                  f"0x{function.begin - self.base:x} points outside the image")
        self.image.functions = table

    def _codeview(self) -> tuple[bytes, int, str] | None:
        """(GUID, age, PDB file name) of the image's CodeView RSDS debug record, if any
        (PE Format, "Debug Directory"; the RSDS layout of Microsoft's PDB)."""
        rva, size = self._directory(DIRECTORY_DEBUG, "debug")
        for at in range(rva, rva + size - 27, 28):
            kind, length, data_rva = struct.unpack("<III", self._read(at + 12, 12))
            if kind != IMAGE_DEBUG_TYPE_CODEVIEW or length < 25 or \
                    not self._inside(data_rva, length):
                continue
            raw = self._read(data_rva, length)
            if raw[:4] == b"RSDS":
                name = raw[24:].split(b"\0", 1)[0].decode("utf-8", "replace")
                return raw[4:20], struct.unpack_from("<I", raw, 20)[0], name
        return None

    def _pdb_symbols(self) -> None:
        """Function names from the PDB the linker wrote beside the image, as WinDbg finds
        it with the image's folder on its symbol path: the path the RSDS record names (if
        absolute), then its file name, then NAME.pdb, in the image's folder; the first whose
        GUID and age are the record's (a stale PDB names nothing). Each procedure (static
        ones too), public symbol and global or static variable is named; without a PDB the
        export names stay."""
        record = self._codeview()
        if record is None:
            return
        guid, age, name = record
        folder = Path(self.path).parent
        recorded = Path(name.replace("\\", "/"))
        candidates = [recorded] if recorded.is_absolute() else []
        candidates += [folder / recorded.name, Path(self.path).with_suffix(".pdb")]
        for candidate in candidates:
            functions = _pdb_functions(candidate, guid, age)
            if functions is not None:
                break
        else:
            return
        for fn_name, rva in functions:
            if fn_name and 0 < rva < self.opt.SizeOfImage:
                self.image.symbols.setdefault(fn_name, self.base + rva)
        self.image.pdb = str(candidate)


def _pdb_functions(path: Path, guid: bytes, age: int) -> list[tuple[str, int]] | None:
    """(name, RVA) of each function and data symbol the PDB at ``path`` names, if it is a
    regular file whose GUID and age are ``guid`` and ``age``; else None (missing, stale or
    unreadable)."""
    if not path.is_file():
        return None
    try:
        with purepdb.PDB.open(str(path)) as pdb:
            info = pdb.info()
            if info.guid != guid or info.age != age:
                return None
            named = [(f.name, f.rva) for f in pdb.functions() if f.rva is not None]
            # Global and static data too, as WinDbg names them (`x ticket!next_ticket`).
            for data in pdb.data_symbols():
                rva = pdb.to_rva(data.segment, data.offset)
                if rva is not None:
                    named.append((data.name, rva))
            return named
    except Exception:  # noqa: BLE001 - a damaged PDB names nothing, as in WinDbg
        return None
