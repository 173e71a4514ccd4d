"""The I/O structures byte for byte as the headers lay them out (issue 12, item 2).

A probe C file lists offsetof/sizeof of every field in emu.nt.wdm's table; it is compiled
with the PE drivers' own toolchain (ziglang's clang, -target x86_64-windows-gnu) against
the WDK's <ntddk.h> from the ziglang wheel, and linked into a tiny .sys whose exported
array ``layout`` holds the numbers; pefile reads them back. They must equal the table, and
the I/O manager's offsets must be the table's.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pefile
import pytest

from emu.nt import io, wdm

ROOT = Path(__file__).resolve().parents[2]


def _entries(structs=wdm.STRUCTS) -> list[tuple[str, str | None]]:
    """(structure, field or None for sizeof), in table order."""
    return [(s.name, f) for s in structs for f in (None, *s.fields)]


def _probe_source(header: str, structs=wdm.STRUCTS) -> str:
    lines = [f"#include <{header}>",
             "__declspec(dllexport) const unsigned long long layout[] = {"]
    lines += [f"    sizeof({name})," if field is None else
              f"    __builtin_offsetof({name}, {field}),"
              for name, field in _entries(structs)]
    lines += ["};",
              "NTSTATUS NTAPI DriverEntry(PDRIVER_OBJECT DriverObject, "
              "PUNICODE_STRING RegistryPath)",
              "{", "    (void)DriverObject; (void)RegistryPath;", "    return 0;", "}"]
    return "\n".join(lines) + "\n"


def _compile(tmp: Path, header: str, include: Path,
             structs=wdm.STRUCTS) -> dict[tuple[str, str | None], int]:
    """Build the probe against ``header`` (found in ``include``) and read its numbers."""
    env = {**os.environ, "ZIG_GLOBAL_CACHE_DIR": str(tmp / "zig-cache"),
           "ZIG_LOCAL_CACHE_DIR": str(tmp / "zig-cache")}
    cc = [sys.executable, "-m", "ziglang", "cc", "-target", "x86_64-windows-gnu"]
    (tmp / "probe.c").write_text(_probe_source(header, structs))
    for command in (
            [*cc, "-O2", "-Wall", f"-I{include}", "-c", "probe.c", "-o", "probe.o"],
            [*cc, "-shared", "-nostdlib", "-Wl,--subsystem,native",
             "-Wl,--entry,DriverEntry", "probe.o", "-o", "probe.sys"]):
        done = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    pe = pefile.PE(str(tmp / "probe.sys"))
    (symbol,) = [s for s in pe.DIRECTORY_ENTRY_EXPORT.symbols if s.name == b"layout"]
    keys = _entries(structs)
    values = struct.unpack(f"<{len(keys)}Q", pe.get_data(symbol.address, 8 * len(keys)))
    return dict(zip(keys, values, strict=True))


def _table(structs=wdm.STRUCTS) -> dict[tuple[str, str | None], int]:
    return {(s.name, f): (s.size if f is None else s.fields[f])
            for s in structs for f in (None, *s.fields)}


def _differences(measured: dict, table: dict) -> list[str]:
    return [f"{name}{'.' + field if field else ' sizeof'}: header {measured[key]:#x}, "
            f"table {table[key]:#x}"
            for key in table for name, field in [key] if measured[key] != table[key]]


@pytest.fixture(scope="module")
def wdk(tmp_path_factory) -> dict:
    """The numbers from the WDK's <ntddk.h> (mingw-w64's, inside the ziglang wheel)."""
    import ziglang

    ddk = Path(ziglang.__file__).parent / "lib" / "libc" / "include" / "any-windows-any" / "ddk"
    return _compile(tmp_path_factory.mktemp("wdk"), "ntddk.h", ddk)


def test_the_table_is_the_wdk_layout(wdk):
    assert _differences(wdk, _table()) == []


def test_the_kernel_structures_are_the_wdk_layout(tmp_path):
    """KEVENT and its DISPATCHER_HEADER, KAPC_STATE, LARGE_INTEGER, KSYSTEM_TIME, the
    KUSER_SHARED_DATA fields the time macros read, STRING: as <ntifs.h> (which includes
    <ntddk.h>; KAPC_STATE and KeStackAttachProcess are declared there) lays them out."""
    import ziglang

    ddk = Path(ziglang.__file__).parent / "lib" / "libc" / "include" / "any-windows-any" / "ddk"
    measured = _compile(tmp_path, "ntifs.h", ddk, wdm.KE_STRUCTS)
    assert _differences(measured, _table(wdm.KE_STRUCTS)) == []


def test_the_io_manager_uses_the_wdk_offsets(wdk):
    """Every offset the I/O manager reads or writes a structure at is the header's."""
    uses = {
        "DRIVER_DEVICE_OBJECT": ("DRIVER_OBJECT", "DeviceObject"),
        "DRIVER_START": ("DRIVER_OBJECT", "DriverStart"),
        "DRIVER_SIZE": ("DRIVER_OBJECT", "DriverSize"),
        "DRIVER_UNLOAD": ("DRIVER_OBJECT", "DriverUnload"),
        "DRIVER_MAJOR_FUNCTION": ("DRIVER_OBJECT", "MajorFunction"),
        "DRIVER_OBJECT_SIZE": ("DRIVER_OBJECT", None),
        "DEVICE_DRIVER": ("DEVICE_OBJECT", "DriverObject"),
        "DEVICE_NEXT": ("DEVICE_OBJECT", "NextDevice"),
        "DEVICE_FLAGS": ("DEVICE_OBJECT", "Flags"),
        "DEVICE_TYPE": ("DEVICE_OBJECT", "DeviceType"),
        "DEVICE_EXTENSION": ("DEVICE_OBJECT", "DeviceExtension"),
        "DEVICE_OBJECT_SIZE": ("DEVICE_OBJECT", None),
        "IRP_MDL": ("IRP", "MdlAddress"),
        "IRP_SYSTEM_BUFFER": ("IRP", "AssociatedIrp.SystemBuffer"),
        "IRP_STATUS": ("IRP", "IoStatus.Status"),
        "IRP_INFORMATION": ("IRP", "IoStatus.Information"),
        "IRP_REQUESTOR_MODE": ("IRP", "RequestorMode"),
        "IRP_USER_BUFFER": ("IRP", "UserBuffer"),
        "IRP_CURRENT_STACK": ("IRP", "Tail.Overlay.CurrentStackLocation"),
        "IRP_ORIGINAL_FILE_OBJECT": ("IRP", "Tail.Overlay.OriginalFileObject"),
        "IRP_STACK": ("IRP", None),           # the stack location follows the IRP
        "STACK_MAJOR": ("IO_STACK_LOCATION", "MajorFunction"),
        "STACK_LENGTH": ("IO_STACK_LOCATION", "Parameters.Read.Length"),
        "STACK_DEVICE": ("IO_STACK_LOCATION", "DeviceObject"),
        "STACK_FILE_OBJECT": ("IO_STACK_LOCATION", "FileObject"),
        "FILE_DEVICE_OBJECT": ("FILE_OBJECT", "DeviceObject"),
        "FILE_FS_CONTEXT": ("FILE_OBJECT", "FsContext"),
        "FILE_FLAGS": ("FILE_OBJECT", "Flags"),
        "FILE_FILE_NAME": ("FILE_OBJECT", "FileName"),
        "FILE_LOCK": ("FILE_OBJECT", "Lock"),
        "FILE_EVENT": ("FILE_OBJECT", "Event"),
        "FILE_IRP_LIST": ("FILE_OBJECT", "IrpList"),
        "FILE_OBJECT_SIZE": ("FILE_OBJECT", None),
        "STACK_SIZE": ("IO_STACK_LOCATION", None),
        "MDL_MAPPED_VA": ("MDL", "MappedSystemVa"),
        "MDL_START_VA": ("MDL", "StartVa"),
        "MDL_BYTE_COUNT": ("MDL", "ByteCount"),
        "MDL_BYTE_OFFSET": ("MDL", "ByteOffset"),
        "MDL_PFN": ("MDL", None),             # the frame numbers follow the MDL
    }
    wrong = [f"io.{name} = {getattr(io, name):#x}, the header's {wdk[key]:#x}"
             for name, key in uses.items() if getattr(io, name) != wdk[key]]
    assert wrong == []
    assert io.IRP_SIZE == wdk[("IRP", None)] + wdk[("IO_STACK_LOCATION", None)]


def test_a_mapped_mdl_reads_as_the_headers_inline_expects(machine_factory, apps, monkeypatch):
    """wdm.h's MmGetSystemAddressForMdlSafe is an inline: with MDL_MAPPED_TO_SYSTEM_VA set
    in MdlFlags it returns MappedSystemVa as it is, so that field holds the buffer's own
    address in system space (its ByteOffset included), and MmProbeAndLockPages leaves
    MDL_PAGES_LOCKED (with MDL_WRITE_OPERATION: a read fills the caller's buffer). direct.sys
    maps the MDL of devread's buffer (not page-aligned); the MDL is read as the request
    completes, before MmUnlockPages clears those flags."""
    seen = []
    unlock = io.IoManager._unlock_mdl

    def before_unlock(self, mdl):
        seen.append(self.ex.kernel_read(mdl, wdm.MDL.size))
        unlock(self, mdl)

    monkeypatch.setattr(io.IoManager, "_unlock_mdl", before_unlock)
    m = machine_factory()
    m.add_driver(ROOT / "guest" / "build" / "drivers" / "direct.sys")
    p = m.spawn(apps / "devread", ["\\Device\\Direct"])
    m.run()
    assert p.output.endswith(b"data: data from direct.sys\n")
    (raw,) = seen                                  # the request's MDL, as it completed
    flags, = struct.unpack_from("<H", raw, wdm.MDL["MdlFlags"])
    mapped, start = struct.unpack_from("<QQ", raw, wdm.MDL["MappedSystemVa"])
    count, offset = struct.unpack_from("<II", raw, wdm.MDL["ByteCount"])
    assert flags == io.MDL_MAPPED_TO_SYSTEM_VA | io.MDL_PAGES_LOCKED | io.MDL_WRITE_OPERATION
    assert offset != 0 and count == 255 and start % 0x1000 == 0
    assert mapped % 0x1000 == offset and mapped >= 0xFFFF_8000_0000_0000


def test_the_device_dpc_is_the_kdpc_in_its_device_object(machine_factory, apps):
    """IoInitializeDpcRequest is KeInitializeDpc(&DeviceObject->Dpc, DpcRoutine, DeviceObject)
    and IoRequestDpc KeInsertQueueDpc(&DeviceObject->Dpc, Irp, Context) (wdm.h's inlines):
    the DPC routine gets the KDPC in the device object as its first argument."""
    m = machine_factory()
    m.add_driver(ROOT / "guest" / "build" / "drivers" / "slowbuffered.sys")
    requester = m.spawn(apps / "slowread", ["\\Device\\SlowBuffered"])
    ex = m.executive
    calls, call_kernel = [], ex.call_kernel

    def spy(routine, *args, **kwargs):
        calls.append((routine, args))
        return call_kernel(routine, *args, **kwargs)

    ex.call_kernel = spy
    m.run()
    assert requester.output.startswith(b"status 0x00000000\n")
    (driver,) = ex.drivers
    device = ex.io.devices["\\Device\\SlowBuffered"].address
    routine = driver.image.symbols["DpcForIsr"]
    ((dpc, context, irp, argument),) = [args for r, args in calls if r == routine]
    assert (dpc, context, argument) == (device + wdm.DEVICE_OBJECT["Dpc"], device, 0)
    assert ex.pools.blocks[irp].tag == io.TAG_IRP
    raw = ex.kernel_read(dpc, wdm.KDPC.size)
    assert raw[wdm.KDPC["Type"]] == wdm.DPC_OBJECT and raw[wdm.KDPC["Importance"]] == 1
    assert struct.unpack_from("<4Q", raw, wdm.KDPC["DeferredRoutine"]) == (
        routine, device, irp, 0)
