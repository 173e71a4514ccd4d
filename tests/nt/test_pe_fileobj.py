"""The FILE_OBJECT of an open device and the I/O manager's default dispatch (issue 12, item
2): one FILE_OBJECT per open, the same in every IRP of that open (the stack location's
FileObject and Irp->Tail.Overlay.OriginalFileObject), laid out as wdm.h's, so a driver
keeps per-open state in FsContext; IRP_MJ_CLEANUP then IRP_MJ_CLOSE when the last handle
goes; and every MajorFunction entry a PE driver leaves alone is nt!IopInvalidDeviceRequest,
so an open of a device whose driver has no IRP_MJ_CREATE routine fails with
STATUS_INVALID_DEVICE_REQUEST (0xC0000010), as on Windows.

The drivers are C written against the WDK's <ntddk.h> only, built here with
``emu build-driver`` into the test's temporary folder, and run with ``emu run``."""

from __future__ import annotations

import re
import struct
import subprocess
from pathlib import Path

import emurun
import pesource
import pytest

from emu.nt import exports, io, ntos, wdm  # noqa: F401 (ntos registers the exports)

# Per-open state in FsContext: CREATE allocates a counter, each READ counts in it, CLEANUP
# and CLOSE say what they see; every routine prints the FILE_OBJECT it gets.
PEFO = r"""
#include <ntddk.h>

static NTSTATUS Complete(PIRP Irp, NTSTATUS Status, ULONG_PTR Information)
{
    Irp->IoStatus.Status = Status;
    Irp->IoStatus.Information = Information;
    IoCompleteRequest(Irp, IO_NO_INCREMENT);
    return Status;
}

static NTSTATUS Create(PDEVICE_OBJECT DeviceObject, PIRP Irp)
{
    PIO_STACK_LOCATION stack = IoGetCurrentIrpStackLocation(Irp);
    PFILE_OBJECT file = stack->FileObject;
    PULONG counter = ExAllocatePoolWithTag(NonPagedPoolNx, sizeof(ULONG), 'oFeP');

    if (!counter)
        return Complete(Irp, STATUS_INSUFFICIENT_RESOURCES, 0);
    *counter = 0;
    file->FsContext = counter;
    DbgPrint("pefo: CREATE fo %p orig %p type %d size %d device %d fscontext2 %p flags %x "
             "related %p name %u %u %p\n", file, Irp->Tail.Overlay.OriginalFileObject,
             file->Type, file->Size, file->DeviceObject == DeviceObject, file->FsContext2,
             file->Flags, file->RelatedFileObject, file->FileName.Length,
             file->FileName.MaximumLength, file->FileName.Buffer);
    if (file->FileName.Length)
        DbgPrint("pefo: FileName %wZ\n", &file->FileName);
    return Complete(Irp, STATUS_SUCCESS, 0);
}

static NTSTATUS Read(PDEVICE_OBJECT DeviceObject, PIRP Irp)
{
    PIO_STACK_LOCATION stack = IoGetCurrentIrpStackLocation(Irp);
    PULONG counter = stack->FileObject->FsContext;

    UNREFERENCED_PARAMETER(DeviceObject);
    *counter += 1;
    DbgPrint("pefo: READ fo %p orig %p count %u\n", stack->FileObject,
             Irp->Tail.Overlay.OriginalFileObject, *counter);
    return Complete(Irp, STATUS_SUCCESS, 0);
}

static NTSTATUS Cleanup(PDEVICE_OBJECT DeviceObject, PIRP Irp)
{
    PFILE_OBJECT file = IoGetCurrentIrpStackLocation(Irp)->FileObject;

    UNREFERENCED_PARAMETER(DeviceObject);
    DbgPrint("pefo: CLEANUP fo %p count %u\n", file, *(PULONG)file->FsContext);
    return Complete(Irp, STATUS_SUCCESS, 0);
}

static NTSTATUS Close(PDEVICE_OBJECT DeviceObject, PIRP Irp)
{
    PFILE_OBJECT file = IoGetCurrentIrpStackLocation(Irp)->FileObject;

    UNREFERENCED_PARAMETER(DeviceObject);
    DbgPrint("pefo: CLOSE fo %p count %u\n", file, *(PULONG)file->FsContext);
    ExFreePoolWithTag(file->FsContext, 'oFeP');
    return Complete(Irp, STATUS_SUCCESS, 0);
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNICODE_STRING name, link;
    PDEVICE_OBJECT device;
    NTSTATUS status;

    UNREFERENCED_PARAMETER(RegistryPath);
    RtlInitUnicodeString(&name, L"\\Device\\PeFo");
    status = IoCreateDevice(DriverObject, 0, &name, FILE_DEVICE_UNKNOWN, 0, FALSE, &device);
    if (!NT_SUCCESS(status))
        return status;
    RtlInitUnicodeString(&link, L"\\DosDevices\\PeFo");
    IoCreateSymbolicLink(&link, &name);
    device->Flags |= DO_BUFFERED_IO;
    DriverObject->MajorFunction[IRP_MJ_CREATE] = Create;
    DriverObject->MajorFunction[IRP_MJ_READ] = Read;
    DriverObject->MajorFunction[IRP_MJ_CLEANUP] = Cleanup;
    DriverObject->MajorFunction[IRP_MJ_CLOSE] = Close;
    return STATUS_SUCCESS;
}
"""

# A device and no dispatch routine at all: DriverEntry prints what the array holds.
PENOCREATE = r"""
#include <ntddk.h>

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNICODE_STRING name;
    PDEVICE_OBJECT device;
    int i, same = 1;

    UNREFERENCED_PARAMETER(RegistryPath);
    for (i = 0; i <= IRP_MJ_MAXIMUM_FUNCTION; i++)
        same &= DriverObject->MajorFunction[i] == DriverObject->MajorFunction[0];
    DbgPrint("penocreate: MajorFunction[0] %p, all %d the same\n",
             DriverObject->MajorFunction[0], same);
    RtlInitUnicodeString(&name, L"\\Device\\PeNoCreate");
    return IoCreateDevice(DriverObject, 0, &name, FILE_DEVICE_UNKNOWN, 0, FALSE, &device);
}
"""

ROOT = Path(__file__).resolve().parents[2]
APPS = ROOT / "guest" / "build" / "apps"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """pefo.sys and penocreate.sys, built by emu build-driver in a temporary folder."""
    return pesource.build_sources(tmp_path_factory.mktemp("drivers"),
                                  {"pefo": PEFO, "penocreate": PENOCREATE})


def emu_run(*argv: str) -> subprocess.CompletedProcess:
    return emurun.emu("run", *argv, cwd=ROOT)


def _pefo_lines(stdout: str) -> list[str]:
    return [line[len("pefo: "):] for line in stdout.splitlines() if line.startswith("pefo: ")]


def test_each_open_has_its_own_file_object_in_every_irp(built, apps):
    """Two opens (two processes): two FILE_OBJECTs, two counters in FsContext, each the
    same in every IRP of its open; a global counter would have said 4 and 5."""
    done = emu_run("--driver", str(built["pefo"]), str(apps / "devbench"), "\\Device\\PeFo",
                   "3", "--", str(apps / "devbench"), "\\??\\PeFo", "2")
    assert done.returncode == 0, done.stderr
    lines = _pefo_lines(done.stdout)
    creates = [re.match(r"CREATE fo (\w+) orig (\w+) type 5 size 216 device 1 "
                        r"fscontext2 0+ flags 0 related 0+ name 0 0 0+$", line)
               for line in lines if line.startswith("CREATE")]
    assert len(creates) == 2 and all(creates), lines
    first, second = (m.group(1) for m in creates)
    assert first != second
    assert all(m.group(1) == m.group(2) for m in creates)       # OriginalFileObject too
    reads = [line for line in lines if line.startswith("READ")]
    assert reads == [f"READ fo {first} orig {first} count 1",
                     f"READ fo {first} orig {first} count 2",
                     f"READ fo {first} orig {first} count 3",
                     f"READ fo {second} orig {second} count 1",
                     f"READ fo {second} orig {second} count 2"]
    assert int(first, 16) >> 47 == 0x1FFFF                     # in kernel pool


def test_cleanup_then_close_when_the_last_handle_goes(built, apps):
    """devread opens, reads once and closes: CREATE, READ, CLEANUP, CLOSE, all with one
    FILE_OBJECT, and the counter the driver kept in FsContext is there at CLOSE."""
    done = emu_run("--driver", str(built["pefo"]), str(apps / "devread"), "\\??\\PeFo")
    assert done.returncode == 0, done.stderr
    lines = _pefo_lines(done.stdout)
    fo = lines[0].split()[2]
    assert [line.split(" fo ")[0] for line in lines] == ["CREATE", "READ", "CLEANUP", "CLOSE"]
    assert lines[1:] == [f"READ fo {fo} orig {fo} count 1", f"CLEANUP fo {fo} count 1",
                         f"CLOSE fo {fo} count 1"]
    assert "status 0x00000000" in done.stdout


def test_file_name_is_the_rest_of_the_path(built, apps):
    r"""\??\PeFo\sub\file opens the device PeFo; FileName is \sub\file (IopParseDevice's
    remaining name); a plain open of the device has an empty FileName (0, 0, NULL)."""
    done = emu_run("--driver", str(built["pefo"]), str(apps / "devread"),
                   "\\??\\PeFo\\sub\\file")
    assert done.returncode == 0, done.stderr
    lines = _pefo_lines(done.stdout)
    assert re.search(r" name 18 18 FFFF[0-9A-F]{12}$", lines[0]), lines
    assert lines[1] == "FileName \\sub\\file"
    missing = emu_run("--driver", str(built["pefo"]), str(apps / "devread"),
                      "\\Device\\PeFoo")
    assert "open failed 0xc0000034" in missing.stdout          # OBJECT_NAME_NOT_FOUND


def test_a_request_without_a_routine_gets_invalid_device_request(built, apps):
    """pefo.sys sets no IRP_MJ_DEVICE_CONTROL routine: the request reaches
    IopInvalidDeviceRequest, which completes it with STATUS_INVALID_DEVICE_REQUEST."""
    done = emu_run("--driver", str(built["pefo"]), str(apps / "devioctl"), "\\??\\PeFo",
                   "0x222000", "hi")
    assert done.returncode == 0, done.stderr
    assert "status 0xc0000010\nreturned 0 bytes\n" in done.stdout
    assert [line.split(" fo ")[0] for line in _pefo_lines(done.stdout)] == [
        "CREATE", "CLEANUP", "CLOSE"]


def test_an_open_without_a_create_routine_fails(built, apps):
    """Every MajorFunction entry starts as nt!IopInvalidDeviceRequest (a non-NULL address
    DriverEntry can read); with no IRP_MJ_CREATE routine the open fails with
    STATUS_INVALID_DEVICE_REQUEST, as on Windows."""
    done = emu_run("--driver", str(built["penocreate"]), str(apps / "devread"),
                   "\\Device\\PeNoCreate")
    assert done.returncode == 1, done.stderr
    address = exports.address_of("IopInvalidDeviceRequest")
    assert address is not None and address >> 47 == 0x1FFFF
    assert f"penocreate: MajorFunction[0] {address:016X}, all 1 the same" in done.stdout
    assert "open failed 0xc0000010" in done.stdout


def test_the_debugger_names_the_default_dispatch_routine(built, apps):
    """nt!IopInvalidDeviceRequest is a trap address like an export's, named so in the
    debugger; no driver can import it (ntoskrnl.exe does not export it)."""
    address = io.invalid_device_request_address()
    assert exports.name_at(address) == "IopInvalidDeviceRequest"
    assert exports.pe_address_of("ntoskrnl.exe", "IopInvalidDeviceRequest") is None
    done = emurun.emu("debug", "--driver", str(built["penocreate"]), str(apps / "devread"),
                      "\\Device\\PeNoCreate", input="break nt!IopInvalidDeviceRequest\nq\n",
                      cwd=ROOT)
    assert f"Breakpoint 1 at 0x{address:016x} <nt!IopInvalidDeviceRequest>" in done.stdout


def test_the_file_object_table_is_the_one_the_io_manager_uses():
    assert io.FILE_OBJECT_SIZE == wdm.FILE_OBJECT.size == 0xD8
    assert (io.FILE_FS_CONTEXT, io.FILE_FILE_NAME) == (0x18, 0x58)
    assert io.STACK_FILE_OBJECT == wdm.IO_STACK_LOCATION["FileObject"]
    assert io.IRP_ORIGINAL_FILE_OBJECT == wdm.IRP["Tail.Overlay.OriginalFileObject"]


def test_the_file_object_and_its_name_are_freed_after_close(built, machine_factory, apps,
                                                            monkeypatch):
    """After IRP_MJ_CLOSE the FILE_OBJECT (tag 'File') and its name's buffer (tag 'IoNm')
    go back to the pool; while the open lives they are there, FileName pointing at it."""
    seen = {}
    close = io.IoManager.close

    def before_close(self, thread, file):
        seen["blocks"] = {a: b.tag for a, b in self.ex.pools.blocks.items() if not b.freed}
        seen["raw"] = self.ex.kernel_read(file.address, wdm.FILE_OBJECT.size)
        seen["address"] = file.address
        return close(self, thread, file)

    monkeypatch.setattr(io.IoManager, "close", before_close)
    m = machine_factory()
    m.add_driver(built["pefo"])
    p = m.spawn(apps / "devread", ["\\??\\PeFo\\x"])
    m.run()
    assert b"status 0x00000000\n" in p.output
    ex, fo = m.executive, seen["address"]
    assert seen["blocks"][fo] == io.TAG_FILE
    length, maximum, _, name = struct.unpack_from("<HHIQ", seen["raw"], wdm.FILE_OBJECT["FileName"])
    assert (length, maximum, seen["blocks"][name]) == (4, 4, io.TAG_FILE_NAME)
    assert ex.kernel_read(name, 4) == "\\x".encode("utf-16-le")
    assert ex.pools.blocks[fo].freed and ex.pools.blocks[name].freed
