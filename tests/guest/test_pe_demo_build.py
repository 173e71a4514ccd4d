"""Static checks of the demo drivers built as PE .sys (guest/drivers-pe/<name>.c ->
guest/build/drivers/<name>.sys), no emulator needed.

Each demo driver is C that includes only the WDK's <ntddk.h> (so it compiles unchanged for
Windows), built by zig cc into a PE32+ image of the native subsystem; here, on the files:

- the source includes <ntddk.h> and nothing else;
- PE32+ for AMD64, subsystem native, entry point DriverEntry in an executable section;
- the imports are exactly the ntoskrnl.exe routines the driver uses (IoCompleteRequest is
  the header's macro for IofCompleteRequest, RtlCopyMemory and RtlFillMemory are memcpy and
  memset, MmGetSystemAddressForMdlSafe an inline over MmMapLockedPagesSpecifyCache);
- each lesson's data is where its bug needs it: rowrite's constant in a section without
  IMAGE_SCN_MEM_WRITE, crash's address in writable data, and bugcheck passes KeBugCheckEx's
  fifth argument above the 32-byte shadow space (Microsoft x64 calling convention);
  hello's pointer to its own name has a DIR64 base relocation, and it passes DbgPrint's
  format in RCX.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import pefile
import purepdb
import pytest
from capstone import CS_ARCH_X86, CS_MODE_64, Cs
from elfcheck import DRIVERS_DIR, GUEST  # noqa: E402
from elfcheck import build as build_guests  # noqa: E402

SOURCES = GUEST / "drivers-pe"

# PE format (Microsoft docs, "PE Format"): section flags, machine and subsystem.
IMAGE_SCN_MEM_EXECUTE = 0x20000000
IMAGE_SCN_MEM_WRITE = 0x80000000
IMAGE_FILE_MACHINE_AMD64 = 0x8664
IMAGE_SUBSYSTEM_NATIVE = 1

# Each demo driver's imports, all from ntoskrnl.exe. Every one completes IRP_MJ_CREATE and
# IRP_MJ_CLOSE, so every one imports IofCompleteRequest.
_IO = {"IofCompleteRequest"}
_SLOW = {"DbgPrint", "IoConnectInterrupt", "IoCreateDevice", "KeInitializeDpc", "KeInsertQueueDpc",
         "PsGetCurrentProcessId", "RtlInitUnicodeString"} | _IO
IMPORTS = {
    "crash": {"DbgPrint"} | _IO,
    "rowrite": {"DbgPrint"} | _IO,
    "nxpool": {"DbgPrint", "ExAllocatePoolWithTag"} | _IO,
    "smep": {"DbgPrint", "IoCreateDevice", "RtlInitUnicodeString"} | _IO,
    "bugcheck": {"DbgPrint", "KeBugCheckEx"} | _IO,
    "failing": {"DbgPrint"} | _IO,
    # hello's fixed-size RtlFillMemory and RtlCopyMemory are compiled inline; KeGetCurrentIrql
    # is the header's inline read of CR8.
    "hello": {"DbgPrint", "ExAllocatePoolWithTag", "ExFreePoolWithTag",
              "PsGetCurrentProcessId"} | _IO,
    "echo": {"DbgPrint", "IoCreateDevice", "PsGetCurrentProcessId", "RtlInitUnicodeString",
             "memcpy"} | _IO,
    "buffered": {"DbgPrint", "IoCreateDevice", "PsGetCurrentProcessId", "RtlInitUnicodeString",
                 "memcpy"} | _IO,
    "direct": {"DbgPrint", "IoCreateDevice", "MmMapLockedPagesSpecifyCache",
               "PsGetCurrentProcessId", "RtlInitUnicodeString", "memcpy"} | _IO,
    "neither": {"DbgPrint", "IoCreateDevice", "PsGetCurrentProcessId", "RtlInitUnicodeString",
                "memcpy"} | _IO,
    "twice": {"IoCreateDevice", "RtlInitUnicodeString"} | _IO,
    "ticket": {"IoCreateDevice", "RtlInitUnicodeString", "memcpy"} | _IO,
    "scribble": {"DbgPrint"} | _IO,
    # __try/__except: C SEH on x64 goes through __C_specific_handler.
    "probe": {"DbgPrint", "IoCreateDevice", "ProbeForWrite", "RtlInitUnicodeString",
              "__C_specific_handler", "memcpy"} | _IO,
    "ioctl": {"IoCreateDevice", "MmMapLockedPagesSpecifyCache", "ProbeForRead", "ProbeForWrite",
              "RtlInitUnicodeString", "__C_specific_handler", "memcpy"} | _IO,
    # KeRaiseIrql and KeLowerIrql: the header's inline CR8 writes.
    "pagedpool": {"DbgPrint", "ExAllocatePoolWithTag", "ExFreePoolWithTag", "IoCreateDevice",
                  "ProbeForWrite", "RtlInitUnicodeString", "__C_specific_handler"} | _IO,
    # IoInitializeDpcRequest and IoRequestDpc: wdm.h's inline and macro over the Ke routines;
    # READ_PORT_ULONG and WRITE_PORT_ULONG: mingw's inline in and out instructions.
    "slowbuffered": _SLOW,
    "slowneither": _SLOW,
    "slowdirect": _SLOW | {"MmMapLockedPagesSpecifyCache"},
}
DRIVERS = sorted(IMPORTS)


@pytest.fixture(scope="module")
def built() -> Path:
    """Builds the guests if a driver is missing or stale; returns guest/build/drivers."""
    return build_guests(DRIVERS_DIR, "drivers")


def _pe(built: Path, name: str) -> pefile.PE:
    path = built / f"{name}.sys"
    assert path.is_file(), f"{path} was not built"
    return pefile.PE(data=path.read_bytes())


def _section_of(pe: pefile.PE, rva: int) -> pefile.SectionStructure:
    section = pe.get_section_by_rva(rva)
    assert section is not None, f"RVA {rva:#x} is in no section"
    return section


@pytest.mark.parametrize("name", DRIVERS)
def test_source_includes_only_ntddk_h(name: str) -> None:
    source = (SOURCES / f"{name}.c").read_text()
    assert re.findall(r"^\s*#\s*include\s*(\S+)", source, re.M) == ["<ntddk.h>"]
    assert not (GUEST / "drivers" / f"{name}.c").exists()


@pytest.mark.parametrize("name", DRIVERS)
def test_is_a_native_pe32_plus_image(built: Path, name: str) -> None:
    pe = _pe(built, name)
    assert pe.FILE_HEADER.Machine == IMAGE_FILE_MACHINE_AMD64
    assert pe.OPTIONAL_HEADER.Magic == pefile.OPTIONAL_HEADER_MAGIC_PE_PLUS
    assert pe.OPTIONAL_HEADER.Subsystem == IMAGE_SUBSYSTEM_NATIVE
    entry = _section_of(pe, pe.OPTIONAL_HEADER.AddressOfEntryPoint)
    assert entry.Characteristics & IMAGE_SCN_MEM_EXECUTE


@pytest.mark.parametrize("name", DRIVERS)
def test_imports_are_exactly_the_routines_used(built: Path, name: str) -> None:
    pe = _pe(built, name)
    imported = {(entry.dll.decode(), i.name.decode())
                for entry in pe.DIRECTORY_ENTRY_IMPORT for i in entry.imports}
    assert imported == {("ntoskrnl.exe", routine) for routine in IMPORTS[name]}


def _symbol_rva(built: Path, driver: str, name: str) -> int:
    """The RVA of a global variable, from the PDB the linker wrote beside the image."""
    with purepdb.PDB.open(str(built / f"{driver}.pdb")) as pdb:
        for data in pdb.data_symbols():
            if data.name == name:
                return pdb.to_rva(data.segment, data.offset)
    pytest.fail(f"no symbol {name} in {driver}.pdb")


def test_rowrite_target_is_read_only(built: Path) -> None:
    pe = _pe(built, "rowrite")
    rva = _symbol_rva(built, "rowrite", "read_only_value")
    assert not _section_of(pe, rva).Characteristics & IMAGE_SCN_MEM_WRITE
    assert pe.get_data(rva, 4) == (42).to_bytes(4, "little")


def test_crash_address_is_in_writable_data(built: Path) -> None:
    pe = _pe(built, "crash")
    rva = _symbol_rva(built, "crash", "unmapped_address")
    assert _section_of(pe, rva).Characteristics & IMAGE_SCN_MEM_WRITE
    assert pe.get_data(rva, 8) == (0xFFFF900000000000).to_bytes(8, "little")


def test_bugcheck_fifth_argument_above_the_shadow_space(built: Path) -> None:
    """KeBugCheckEx(0xE2, 1, 2, 3, 4): RCX, RDX, R8, R9, then [rsp + 0x20] at the call."""
    pe = _pe(built, "bugcheck")
    base = pe.OPTIONAL_HEADER.ImageBase
    slot = next(i.address for entry in pe.DIRECTORY_ENTRY_IMPORT for i in entry.imports
                if i.name == b"KeBugCheckEx")
    entry = pe.OPTIONAL_HEADER.AddressOfEntryPoint
    md = Cs(CS_ARCH_X86, CS_MODE_64)
    md.detail = True
    seen: list[str] = []
    for insn in md.disasm(pe.get_data(entry, 0x100), base + entry):
        mem = [op.mem for op in insn.operands if op.type == 3]      # X86_OP_MEM
        if insn.mnemonic == "call" and mem and mem[0].base != 0 \
                and insn.reg_name(mem[0].base) == "rip" \
                and insn.address + insn.size + mem[0].disp == slot:
            break
        seen.append(f"{insn.mnemonic} {insn.op_str}")
    else:
        pytest.fail("no call to KeBugCheckEx through its import address table slot")
    tail = seen[-6:]
    for move in ("mov ecx, 0xe2", "mov edx, 1", "mov r8d, 2", "mov r9d, 3",
                 "mov qword ptr [rsp + 0x20], 4"):
        assert move in tail, (move, tail)


def test_hello_relocation_points_at_its_name(built: Path) -> None:
    """driver_name holds the address of "hello.sys": a DIR64 base relocation (PE Format,
    "The .reloc Section": type 10) the loader must apply at the image's load address."""
    pe = _pe(built, "hello")
    rva = _symbol_rva(built, "hello", "driver_name")
    relocated = {entry.rva: entry.type for block in pe.DIRECTORY_ENTRY_BASERELOC
                 for entry in block.entries if entry.type}
    assert relocated.get(rva) == pefile.RELOCATION_TYPE["IMAGE_REL_BASED_DIR64"]
    target = int.from_bytes(pe.get_data(rva, 8), "little") - pe.OPTIONAL_HEADER.ImageBase
    assert pe.get_data(target, 10) == b"hello.sys\0"


def test_hello_passes_the_format_in_rcx(built: Path) -> None:
    """DbgPrint's first argument, the format, in RCX (Microsoft x64 calling convention)."""
    pe = _pe(built, "hello")
    base = pe.OPTIONAL_HEADER.ImageBase
    rdata = next(s for s in pe.sections if s.Name.rstrip(b"\0") == b".rdata")
    greeting = rdata.VirtualAddress + rdata.get_data().index(
        b"hello from ring 0: DriverEntry of %s\n") + base
    entry = pe.OPTIONAL_HEADER.AddressOfEntryPoint
    md = Cs(CS_ARCH_X86, CS_MODE_64)
    md.detail = True
    loads = set()
    for insn in md.disasm(pe.get_data(entry, 0x200), base + entry):
        if insn.mnemonic == "lea" and insn.operands[1].mem.base \
                and insn.reg_name(insn.operands[1].mem.base) == "rip" \
                and insn.address + insn.size + insn.operands[1].mem.disp == greeting:
            loads.add(insn.reg_name(insn.operands[0].reg))
    assert loads == {"rcx"}
