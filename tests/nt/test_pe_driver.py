"""PE drivers: PE32+ native images built from the WDK's <ntddk.h>, loaded into the kernel
half and run at ring 0 (guest/drivers-pe/, built by the guest Makefile with ziglang)."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import emurun
import pefile
import pytest
from driverboot import boot

from emu.hw import mmu
from emu.nt import layout
from emu.nt import pe as pe_loader
from emu.nt.bugcheck import BugCheckCode
from emu.nt.loader import LoaderError

ROOT = Path(__file__).resolve().parents[2]
DRIVERS = ROOT / "guest" / "build" / "drivers"
REGISTRY = "\\Registry\\Machine\\System\\CurrentControlSet\\Services\\"
IMAGE_SCN_MEM_EXECUTE, IMAGE_SCN_MEM_WRITE = 0x2000_0000, 0x8000_0000


@pytest.fixture(scope="module")
def sys_files(apps) -> Path:
    """The built drivers (the apps fixture runs the guest build if needed)."""
    return DRIVERS


def walk(m, va: int, access: str) -> mmu.Translation:
    """Walk the system page tables for ``va`` at ring 0, as the CPU would."""
    cpu = m.executive.cpu
    return mmu.walk(cpu.mem, va, access, cr3=m.executive.mm.system.cr3, cpl=0, cr0=cpu.cr0,
                    cr4=cpu.cr4, efer=cpu.efer)


def can(m, va: int, access: str) -> bool:
    try:
        walk(m, va, access)
    except mmu.PageFault:
        return False
    return True


# -- what works -------------------------------------------------------------------------


def test_driver_entry_prints_its_registry_path(machine_factory, apps, sys_files):
    m, (p,), r = boot(machine_factory, apps, [sys_files / "pehello.sys"], ("hello",))
    (driver,) = r.drivers
    assert driver.status == 0 and not driver.unloaded          # STATUS_SUCCESS: it stays
    assert driver.image.base >= layout.KERNEL_DRIVERS
    assert bytes(m.executive.debug_output) == (
        f"pehello.sys: DriverEntry, registry path {REGISTRY}pehello\n".encode())
    assert p.output == b"Hello, world!\n"                      # and then the app ran


def test_the_registry_path_is_a_unicode_string_in_kernel_memory(machine_factory, apps,
                                                                sys_files):
    from emu.nt import drivers

    m = machine_factory()
    address = drivers._registry_path(m.executive, "pehello.sys")
    length, maximum, _, buffer = struct.unpack("<HHIQ", m.executive.kernel_read(address, 16))
    text = (REGISTRY + "pehello").encode("utf-16-le")
    assert (length, maximum) == (len(text), len(text) + 2)     # bytes, without / with the NUL
    assert buffer >= layout.KERNEL_SPACE_START and address >= layout.KERNEL_SPACE_START
    assert m.executive.kernel_read(buffer, maximum) == text + b"\0\0"


def test_each_section_gets_the_rights_of_its_characteristics(machine_factory, apps,
                                                             sys_files):
    m, _, r = boot(machine_factory, apps, [sys_files / "pereloc.sys"])
    base = r.drivers[0].image.base
    image = pefile.PE(str(sys_files / "pereloc.sys"), fast_load=True)
    kinds = set()
    for section in image.sections:
        ch = section.Characteristics
        for va in range(base + section.VirtualAddress,
                        base + section.VirtualAddress + section.Misc_VirtualSize, 0x1000):
            if ch & 0x0200_0000:        # IMAGE_SCN_MEM_DISCARDABLE (.reloc): freed
                assert not can(m, va, "read")
                continue
            assert not walk(m, va, "read").user                 # no U/S bit: ring 0 only
            assert can(m, va, "fetch") == bool(ch & IMAGE_SCN_MEM_EXECUTE)
            assert can(m, va, "write") == bool(ch & IMAGE_SCN_MEM_WRITE)
        kinds.add((bool(ch & IMAGE_SCN_MEM_EXECUTE), bool(ch & IMAGE_SCN_MEM_WRITE)))
    assert kinds >= {(True, False), (False, False), (False, True)}     # RX, R+NX, RW+NX
    assert can(m, base, "read") and not can(m, base, "write") and not can(m, base, "fetch")


def test_code_is_not_writable_and_data_is_not_executable(machine_factory, apps, sys_files):
    m, _, r = boot(machine_factory, apps, [sys_files / "pereloc.sys"])
    image = pefile.PE(str(sys_files / "pereloc.sys"), fast_load=True)
    base = r.drivers[0].image.base
    sections = {s.Name.rstrip(b"\0").decode(): base + s.VirtualAddress for s in image.sections}
    leaf = walk(m, sections[".text"], "fetch").steps[-1]
    assert leaf.flags & mmu.PTE.P and not leaf.flags & (mmu.PTE.RW | mmu.PTE.NX | mmu.PTE.US)
    for name, rw in ((".rdata", 0), (".data", mmu.PTE.RW)):
        leaf = walk(m, sections[name], "read").steps[-1]
        assert leaf.flags & (mmu.PTE.RW | mmu.PTE.NX | mmu.PTE.US) == rw | mmu.PTE.NX


def test_base_relocations_are_applied(machine_factory, apps, sys_files):
    image = pefile.PE(str(sys_files / "pereloc.sys"))
    assert image.OPTIONAL_HEADER.ImageBase == 0x1_8000_0000
    assert any(e.type == 10 for b in image.DIRECTORY_ENTRY_BASERELOC for e in b.entries)
    # Second in line: a slot other than the first, and neither is the preferred base.
    m, _, r = boot(machine_factory, apps, [sys_files / "pehello.sys", sys_files / "pereloc.sys"])
    driver = r.drivers[1]
    assert driver.image.base == layout.KERNEL_DRIVERS + layout.KERNEL_DRIVER_SLOT
    assert bytes(m.executive.debug_output).endswith(b"pereloc.sys: alpha beta gamma\n")
    for block in image.DIRECTORY_ENTRY_BASERELOC:
        for entry in block.entries:
            if entry.type == 10:
                linked = image.get_qword_at_rva(entry.rva)
                loaded = m.executive.kernel_read_u64(driver.image.base + entry.rva)
                assert loaded == linked - image.OPTIONAL_HEADER.ImageBase + driver.image.base


def test_imports_are_bound_through_the_import_address_table(machine_factory, apps, sys_files):
    from emu.nt import exports

    image = pefile.PE(str(sys_files / "pehello.sys"))
    (entry,) = image.DIRECTORY_ENTRY_IMPORT
    assert entry.dll == b"ntoskrnl.exe"
    m, _, r = boot(machine_factory, apps, [sys_files / "pehello.sys"])
    base = r.drivers[0].image.base
    for imp in entry.imports:
        slot = base + imp.address - image.OPTIONAL_HEADER.ImageBase
        assert m.executive.kernel_read_u64(slot) == exports.address_of(imp.name.decode())


def test_dbgprint_prints_the_kernel_string_types(machine_factory, apps, sys_files):
    m, _, r = boot(machine_factory, apps, [sys_files / "peformat.sys"])
    assert r.drivers[0].status == 0
    assert bytes(m.executive.debug_output) == (
        b"peformat.sys: [wide] [ws] [S] [ansi] [pad   ] [caf?] [(null)]\n"
        b"peformat.sys: [ab] [wi] [007] [00ab] [ -005] [xy    ] [] [  042]\n")


def test_a_write_to_an_unmapped_kernel_address_is_bug_check_0x50(machine_factory, apps,
                                                                 sys_files):
    m, (p,), r = boot(machine_factory, apps, [sys_files / "pecrash.sys"], ("hello",))
    bc = r.bugcheck
    assert bc.code == BugCheckCode.PAGE_FAULT_IN_NONPAGED_AREA == 0x50
    assert bc.params == (0xFFFF_9000_0000_0000, 2, bc.rip, 0)          # 2: a write
    assert bc.driver == "pecrash.sys" and bc.location.startswith("pecrash.sys!DriverEntry+0x")
    assert r.drivers[0].image.base <= bc.rip < r.drivers[0].image.end
    assert bytes(m.executive.debug_output) == \
        b"pecrash.sys: writing to an unmapped kernel address\n"
    assert p.output == b"" and p in r.unfinished                       # nothing else ran


def test_the_security_cookie_is_initialised(machine_factory, apps, sys_files):
    image = pefile.PE(str(sys_files / "pecookie.sys"))
    cookie_rva = image.DIRECTORY_ENTRY_LOAD_CONFIG.struct.SecurityCookie - \
        image.OPTIONAL_HEADER.ImageBase
    assert image.get_qword_at_rva(cookie_rva) == pe_loader.DEFAULT_SECURITY_COOKIE
    m, _, r = boot(machine_factory, apps, [sys_files / "pecookie.sys"])
    cookie = m.executive.kernel_read_u64(r.drivers[0].image.base + cookie_rva)
    assert cookie not in (0, pe_loader.DEFAULT_SECURITY_COOKIE) and cookie >> 48 == 0
    assert bytes(m.executive.debug_output) == f"pecookie.sys: cookie replaced {cookie:x}\n"\
        .encode()
    other, _, again = boot(machine_factory, apps, [sys_files / "pecookie.sys"])
    assert again.drivers[0].status == 0                        # and the same every run
    assert bytes(other.executive.debug_output) == bytes(m.executive.debug_output)


# -- the build ---------------------------------------------------------------------------


def test_the_guest_drivers_are_native_pe32_plus_images_importing_from_ntoskrnl(sys_files):
    for source in sorted((ROOT / "guest" / "drivers-pe").glob("*.c")):
        image = pefile.PE(str(sys_files / f"{source.stem}.sys"))
        assert (image.FILE_HEADER.Machine, image.OPTIONAL_HEADER.Magic,
                image.OPTIONAL_HEADER.Subsystem) == (0x8664, 0x20B, 1), source.stem
        dlls = [e.dll for e in image.DIRECTORY_ENTRY_IMPORT]         # hal.dll: petime's
        assert dlls in ([b"ntoskrnl.exe"], [b"ntoskrnl.exe", b"HAL.dll"]), source.stem
        if source.stem == "noentry":            # the loader's refusal: no entry point at all
            assert image.OPTIONAL_HEADER.AddressOfEntryPoint == 0
            continue
        assert image.OPTIONAL_HEADER.AddressOfEntryPoint == next(
                s.address for s in image.DIRECTORY_ENTRY_EXPORT.symbols
                if s.name == b"DriverEntry")


def test_make_has_nothing_left_to_build(sys_files):
    run = subprocess.run(["make", "-q", "-C", str(ROOT / "guest"), "pe-drivers"],
                         capture_output=True)
    assert run.returncode == 0


def test_the_documented_commands_build_a_driver_in_any_folder(machine_factory, apps,
                                                              tmp_path):
    import ziglang

    ddk = Path(ziglang.__file__).parent / "lib/libc/include/any-windows-any/ddk"
    source = tmp_path / "mine.c"
    source.write_text((ROOT / "guest" / "drivers-pe" / "pehello.c").read_text()
                      .replace("pehello.sys", "mine.sys"))
    cc = [sys.executable, "-m", "ziglang", "cc", "-target", "x86_64-windows-gnu"]
    env = {"ZIG_GLOBAL_CACHE_DIR": str(tmp_path / "zig"), "ZIG_LOCAL_CACHE_DIR":
           str(tmp_path / "zig"), "PATH": "/usr/bin:/bin"}
    subprocess.run([*cc, "-O2", "-fms-extensions", "-Wall", "-Werror", f"-I{ddk}", "-c",
                    "mine.c", "-o", "mine.o"], cwd=tmp_path, env=env, check=True)
    subprocess.run([*cc, "-shared", "-nostdlib", "-Wl,--subsystem,native",
                    "-Wl,--entry,DriverEntry", "mine.o", "-lntoskrnl", "-o", "mine.sys"],
                   cwd=tmp_path, env=env, check=True)
    m, _, r = boot(machine_factory, apps, [tmp_path / "mine.sys"])
    assert r.drivers[0].status == 0
    assert bytes(m.executive.debug_output) == (
        f"mine.sys: DriverEntry, registry path {REGISTRY}mine\n".encode())


# -- what is refused ----------------------------------------------------------------------


def test_an_unknown_import_is_refused_at_load_by_dll_and_name(machine_factory, sys_files):
    m = machine_factory()
    path = sys_files / "peunknown.sys"
    with pytest.raises(LoaderError) as err:
        m.add_driver(path)
    assert str(err.value) == (f"{path}: unknown import ntoskrnl.exe!ZwCreateKey (the kernel "
                              "does not export it to PE drivers): STATUS_PROCEDURE_NOT_FOUND")
    assert m.executive.pending_drivers == []


@pytest.mark.parametrize("name", ["MmCopyFromUser", "IoCompleteRequest", "IoRequestDpc",
                                  "MmCopyToUser", "MmGetSystemAddressForMdlSafe",
                                  "IoInitializeDpcRequest"])
def test_the_retired_elf_dialect_routines_are_not_exports(sys_files, name):
    # The retired ELF .sys files' dialect had these (not Windows exports, or wdm.h inlines or
    # macros); they went with it: a driver importing one is refused, nt!Name is unknown.
    from emu.nt import exports, ntos  # noqa: F401 (ntos registers the exports)

    assert exports.address_of(name) is None and name not in exports.EXPORTS
    image = pefile.PE(str(sys_files / "pehello.sys"))
    descriptor = image.DIRECTORY_ENTRY_IMPORT[0].struct
    data = bytearray(image.__data__)
    # The hint/name entry, rewritten over the DOS stub's text (RVA 0x40, mapped with the
    # headers), and both thunks of the one import pointed at it.
    data[0x40:0x40 + len(name) + 3] = b"\0\0" + name.encode() + b"\0"
    for thunk in (descriptor.OriginalFirstThunk, descriptor.FirstThunk):
        at = image.get_offset_from_rva(thunk)
        data[at:at + 8] = struct.pack("<Q", 0x40)
    with pytest.raises(LoaderError, match=rf"unknown import ntoskrnl\.exe!{name} "):
        pe_loader.parse_pe_driver(bytes(data), "x.sys", layout.KERNEL_DRIVERS)


def test_emu_run_refuses_it_in_one_line_with_exit_status_2(apps, sys_files):
    run = emurun.emu("run", "--driver", str(sys_files / "peunknown.sys"), str(apps / "hello"),
                     cwd=ROOT)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr == (f"emu: error: {sys_files / 'peunknown.sys'}: unknown import "
                          "ntoskrnl.exe!ZwCreateKey (the kernel does not export it to PE "
                          "drivers): STATUS_PROCEDURE_NOT_FOUND\n")


def _edit(data: bytes, change) -> bytes:
    image = pefile.PE(data=data)
    change(image)
    return bytes(image.write())


def _set(path: str, value: int):
    def change(image):
        *parts, last = path.split(".")
        obj = image
        for part in parts:
            obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
        setattr(obj, last, value)
    return change


def _hello() -> bytes:
    return (DRIVERS / "pehello.sys").read_bytes()


def _reloc() -> bytes:
    return (DRIVERS / "pereloc.sys").read_bytes()


def _lfanew(data: bytes) -> int:
    return struct.unpack_from("<I", data, 0x3C)[0]


def _strip_relocations(image):
    image.FILE_HEADER.Characteristics |= 0x0001                # IMAGE_FILE_RELOCS_STRIPPED
    image.OPTIONAL_HEADER.DATA_DIRECTORY[5].Size = 0


def _relocation_beyond_the_image(image):
    image.DIRECTORY_ENTRY_BASERELOC[0].struct.VirtualAddress = \
        image.OPTIONAL_HEADER.SizeOfImage


def _iat_beyond_the_image(image):
    image.DIRECTORY_ENTRY_IMPORT[0].struct.FirstThunk = 0x7FFF_0000


def _at_rva(data: bytes, rva: int, raw: bytes) -> bytes:
    offset = pefile.PE(data=data, fast_load=True).get_offset_from_rva(rva)
    return data[:offset] + raw + data[offset + len(raw):]


def _by_ordinal() -> bytes:
    data = _hello()
    image = pefile.PE(data=data)
    descriptor = image.DIRECTORY_ENTRY_IMPORT[0].struct
    ordinal = struct.pack("<Q", 1 << 63 | 5)              # IMAGE_ORDINAL_FLAG64 | 5
    return _at_rva(_at_rva(data, descriptor.OriginalFirstThunk, ordinal),
                   descriptor.FirstThunk, ordinal)


def _relocation_of_type(kind: int) -> bytes:
    data = _reloc()
    directory = pefile.PE(data=data, fast_load=True).OPTIONAL_HEADER.DATA_DIRECTORY[5]
    return _at_rva(data, directory.VirtualAddress + 8, struct.pack("<H", kind << 12 | 0x20))


def _short_block(image):
    image.DIRECTORY_ENTRY_BASERELOC[0].struct.SizeOfBlock = 14


def _cookie_in_read_only_data(image):
    image.DIRECTORY_ENTRY_LOAD_CONFIG.struct.SecurityCookie = \
        image.OPTIONAL_HEADER.ImageBase + 0x2000             # .rdata


def _overlap(image):
    image.sections[1].VirtualAddress = image.sections[0].VirtualAddress


def _out_of_order(image):
    # The section table lists .rdata (now at 0x3000) before .buildid (now at 0x2000); pefile
    # sorts its list by address, the table stays as the file has it.
    first, second = image.sections[1], image.sections[2]
    first.VirtualAddress, second.VirtualAddress = second.VirtualAddress, first.VirtualAddress


BAD = {
    "not PE": (lambda: b"MZ" + bytes(200), "not a PE image (Invalid NT Headers signature)"),
    "i386": (lambda: _edit(_hello(), _set("FILE_HEADER.Machine", 0x14C)),
             "a 32-bit (i386) image, not AMD64: drivers here are x64 PE32+ images"),
    "ARM64": (lambda: _edit(_hello(), _set("FILE_HEADER.Machine", 0xAA64)),
              "an ARM64 image, not AMD64: drivers here are x64 PE32+ images"),
    "user EXE": (lambda: _edit(_hello(), _set("OPTIONAL_HEADER.Subsystem", 3)),
                 "subsystem 3 (Windows console), not native (1): a user-mode EXE/DLL is not a "
                 "driver (link with --subsystem,native)"),
    "user GUI DLL": (lambda: _edit(_hello(), _set("OPTIONAL_HEADER.Subsystem", 2)),
                     "subsystem 2 (Windows GUI), not native (1)"),
    "not an executable image": (
        lambda: _edit(_hello(), _set("FILE_HEADER.Characteristics", 0x2020)),
        "not an executable image (IMAGE_FILE_EXECUTABLE_IMAGE is clear)"),
    "truncated optional header": (lambda: _hello()[:_lfanew(_hello()) + 24 + 0x40],
                                  "truncated headers (the file ends inside them)"),
    "truncated section table": (lambda: _hello()[:_lfanew(_hello()) + 24 + 0xF0 + 20],
                                "truncated headers (the file ends inside them)"),
    "truncated DOS header": (lambda: _hello()[:40],
                             "truncated headers (the file ends inside the DOS header)"),
    "truncated section data": (lambda: _hello()[:-0x100], "runs past the end of the file"),
    "section outside the image": (
        lambda: _edit(_hello(), _set("sections.3.Misc_VirtualSize", 0x100000)),
        "section .pdata (RVA 0x4000, size 0x100000) lies outside the image (size 0x5000)"),
    "overlapping sections": (lambda: _edit(_hello(), _overlap),
                             "section .rdata at RVA 0x1000 overlaps the headers or the "
                             "section before it"),
    "sections out of order": (lambda: _edit(_reloc(), _out_of_order),
                              "section .buildid at RVA 0x2000 overlaps the headers or the "
                              "section before it"),
    "unaligned section": (lambda: _edit(_hello(), _set("sections.1.VirtualAddress", 0x2100)),
                          "section .rdata at RVA 0x2100 is not aligned"),
    "absurd image size": (lambda: _edit(_hello(), _set("OPTIONAL_HEADER.SizeOfImage",
                                                       0x7FFF_FFFF)),
                          "image size 0x7fffffff (a driver slot holds 1 byte to 16 MiB)"),
    "absurd section count": (lambda: _edit(_hello(), _set("FILE_HEADER.NumberOfSections", 0)),
                             "0 sections (1 to 96 allowed)"),
    "small section alignment": (lambda: _edit(_hello(), _set("OPTIONAL_HEADER.SectionAlignment",
                                                             0x200)),
                                "section alignment 0x200 is not a multiple of the page size"),
    "relocation outside the image": (lambda: _edit(_reloc(), _relocation_beyond_the_image),
                                     "relocation at RVA 0x7020 points outside the image"),
    "relocations stripped": (lambda: _edit(_reloc(), _strip_relocations),
                             "relocations stripped (IMAGE_FILE_RELOCS_STRIPPED), but it must "
                             "load at 0xfffff80001000000, not its preferred base 0x180000000"),
    "import directory outside the image": (
        lambda: _edit(_hello(), _set("OPTIONAL_HEADER.DATA_DIRECTORY.1.VirtualAddress",
                                     0x100000)),
        "the import directory (RVA 0x100000, 0x28 bytes) lies outside the image"),
    "import address table outside the image": (
        lambda: _edit(_hello(), _iat_beyond_the_image),
        "import descriptor of ntoskrnl.exe: FirstThunk points outside the image"),
    "unknown DLL": (lambda: _hello().replace(b"ntoskrnl.exe", b"ntoskrnX.exe"),
                    "imports from ntoskrnX.exe, which is not loaded (drivers bind to "
                    "ntoskrnl.exe and hal.dll): STATUS_DLL_NOT_FOUND"),
    "PE32": (lambda: _edit(_hello(), _set("OPTIONAL_HEADER.Magic", 0x10B)),
             "optional header magic 0x10b, not PE32+ (0x20b)"),
    "import by ordinal": (_by_ordinal, "imports ntoskrnl.exe ordinal 5: drivers bind by name"),
    "relocation of another type": (lambda: _relocation_of_type(3),
                                   "relocation type 3 at RVA 0x2020 (only "
                                   "IMAGE_REL_BASED_DIR64 applies to x64 images)"),
    "relocation blocks short of the directory": (
        lambda: _edit(_reloc(), _short_block),
        "malformed base relocation blocks (they do not fill the directory)"),
    "security cookie in read-only data": (
        lambda: _edit((DRIVERS / "pecookie.sys").read_bytes(), _cookie_in_read_only_data),
        "security cookie at 0x180002000 is not in the image's writable data"),
    "entry point in data": (lambda: _edit(_hello(), _set("OPTIONAL_HEADER.AddressOfEntryPoint",
                                                         0x2000)),
                            "entry point RVA 0x2000 is not in an executable section"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_image_is_refused_in_one_line_naming_the_problem(sys_files, case):
    make, message = BAD[case]
    with pytest.raises(LoaderError) as err:
        pe_loader.parse_pe_driver(make(), "bad.sys", layout.KERNEL_DRIVERS)
    text = str(err.value)
    assert "\n" not in text and text.startswith("bad.sys: ")
    assert message in text


def test_a_pe_file_goes_to_the_pe_loader_whatever_its_name(machine_factory, apps, sys_files,
                                                           tmp_path):
    renamed = tmp_path / "hello.bin"
    renamed.write_bytes((sys_files / "pehello.sys").read_bytes())
    m, _, r = boot(machine_factory, apps, [renamed])
    assert r.drivers[0].status == 0
    assert bytes(m.executive.debug_output) == (
        f"pehello.sys: DriverEntry, registry path {REGISTRY}hello\n".encode())


def test_a_bug_check_through_call_r12_names_the_call_not_its_last_two_bytes(machine_factory,
                                                                            apps, sys_files):
    # `call r12` is 41 FF D4; FF D4 alone reads `call rsp`: the call site is 3 bytes back.
    m, _, r = boot(machine_factory, apps, [sys_files / "pecallreg.sys"])
    bc = r.bugcheck
    assert (bc.code, bc.params) == (0xE2, (1, 2, 3, 4))
    assert bc.instruction == "call r12"
    assert m.executive.kernel_read(bc.rip, 3) == b"\x41\xff\xd4"


def test_refusing_a_bad_image_runs_no_full_collection_of_the_heap(sys_files):
    """pefile closes every image it refuses with a full ``gc.collect()``, which walks every
    object of a long session (the debugger's, a fuzz run's); the loader gives it bytes, not
    a file, and that collection is not run: refusing each bad image starts none."""
    import gc

    collections: list[int] = []

    def seen(phase: str, info: dict) -> None:
        if phase == "start":
            collections.append(info["generation"])

    was_enabled = gc.isenabled()
    gc.disable()                 # only explicit collections remain to be seen
    gc.callbacks.append(seen)
    try:
        for make, _message in BAD.values():
            with pytest.raises(LoaderError):
                pe_loader.parse_pe_driver(make(), "bad.sys", layout.KERNEL_DRIVERS)
    finally:
        gc.callbacks.remove(seen)
        if was_enabled:
            gc.enable()
    assert collections == []
