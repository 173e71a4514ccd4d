"""Handle rundown at process exit: a process that ends without NtClose still closes every
handle (ObKillProcess), in its own context and in handle order, before its address space
goes: the last handle to an open device sends the driver IRP_MJ_CLEANUP then IRP_MJ_CLOSE
with the open's FILE_OBJECT, which then goes back to the pool. A fault in the CLOSE
routine during that teardown is a bug check like any other."""

from __future__ import annotations

import re
from pathlib import Path

import emurun
import pesource
import pytest

from emu.nt import io

# Every routine prints the FILE_OBJECT and the process it runs in (PsGetCurrentProcessId).
PEEXIT = r"""
#include <ntddk.h>

static NTSTATUS Complete(PIRP Irp)
{
    Irp->IoStatus.Status = STATUS_SUCCESS;
    Irp->IoStatus.Information = 0;
    IoCompleteRequest(Irp, IO_NO_INCREMENT);
    return STATUS_SUCCESS;
}

static NTSTATUS Say(PCSTR what, PDEVICE_OBJECT DeviceObject, PIRP Irp)
{
    UNREFERENCED_PARAMETER(DeviceObject);
    DbgPrint("peexit: %s fo %p pid %u\n", what, IoGetCurrentIrpStackLocation(Irp)->FileObject,
             (ULONG)(ULONG_PTR)PsGetCurrentProcessId());
    return Complete(Irp);
}

static NTSTATUS Create(PDEVICE_OBJECT D, PIRP Irp) { return Say("CREATE", D, Irp); }
static NTSTATUS Read(PDEVICE_OBJECT D, PIRP Irp) { return Say("READ", D, Irp); }
static NTSTATUS Cleanup(PDEVICE_OBJECT D, PIRP Irp) { return Say("CLEANUP", D, Irp); }

static NTSTATUS Close(PDEVICE_OBJECT D, PIRP Irp)
{
#ifdef FAULT_IN_CLOSE
    *(volatile ULONG *)0x10 = 1;
#endif
    return Say("CLOSE", D, Irp);
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNICODE_STRING name;
    PDEVICE_OBJECT device;
    NTSTATUS status;

    UNREFERENCED_PARAMETER(RegistryPath);
    RtlInitUnicodeString(&name, L"\\Device\\PeExit");
    status = IoCreateDevice(DriverObject, 0, &name, FILE_DEVICE_UNKNOWN, 0, FALSE, &device);
    if (!NT_SUCCESS(status))
        return status;
    device->Flags |= DO_BUFFERED_IO;
    DriverObject->MajorFunction[IRP_MJ_CREATE] = Create;
    DriverObject->MajorFunction[IRP_MJ_READ] = Read;
    DriverObject->MajorFunction[IRP_MJ_CLEANUP] = Cleanup;
    DriverObject->MajorFunction[IRP_MJ_CLOSE] = Close;
    return STATUS_SUCCESS;
}
"""

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """peexit.sys, and peexitbad.sys whose CLOSE routine writes to address 0x10."""
    return pesource.build_sources(tmp_path_factory.mktemp("drivers"), {
        "peexit": PEEXIT, "peexitbad": "#define FAULT_IN_CLOSE 1\n" + PEEXIT})


def _lines(output: bytes | str) -> list[str]:
    text = output.decode() if isinstance(output, bytes) else output
    return [line[len("peexit: "):] for line in text.splitlines() if line.startswith("peexit: ")]


def test_a_process_that_exits_without_closing_gets_cleanup_then_close(built, machine_factory,
                                                                      apps, monkeypatch):
    """devbench opens the device, reads twice and returns from main without NtClose: the
    driver still sees CLEANUP then CLOSE with the same FILE_OBJECT, in devbench's process,
    and the FILE_OBJECT's pool block is freed."""
    m = machine_factory()
    m.add_driver(built["peexit"])
    p = m.spawn(apps / "devbench", ["\\Device\\PeExit", "2"])
    m.run()
    assert b"reads 2, last status 0x00000000" in p.output
    files = [b for b in m.executive.pools.blocks.values() if b.tag == io.TAG_FILE]
    assert len(files) == 1 and files[0].freed


def test_a_fault_in_close_during_rundown_is_a_bug_check(built, apps):
    """peexitbad.sys writes to address 0x10 in its CLOSE routine: at devbench's exit that is
    bug check 0x1E KMODE_EXCEPTION_NOT_HANDLED (CR2 0x10), after CLEANUP ran."""
    done = emurun.emu("run", "--driver", str(built["peexitbad"]), str(apps / "devbench"),
                      "\\Device\\PeExit", "1", cwd=ROOT)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert [line.split(" fo ")[0] for line in _lines(done.stdout)] == ["CREATE", "READ",
                                                                      "CLEANUP"]
    assert "*** KMODE_EXCEPTION_NOT_HANDLED (0x0000001E)" in done.stderr
    assert "cr2=0000000000000010" in done.stderr


def test_rundown_is_in_the_exiting_process_and_frees_the_file_object(built, apps):
    """Through `emu run`: CREATE, READ, READ, CLEANUP, CLOSE, one FILE_OBJECT, every line in
    the app's process (its pid), and the machine ends normally."""
    done = emurun.emu("run", "--driver", str(built["peexit"]), str(apps / "devbench"),
                      "\\Device\\PeExit", "2", cwd=ROOT)
    assert done.returncode == 0, done.stderr
    lines = _lines(done.stdout)
    m = re.match(r"CREATE fo (\w+) pid (\d+)$", lines[0])
    assert m, lines
    fo, pid = m.groups()
    assert int(pid) != 0
    assert lines == [f"{what} fo {fo} pid {pid}"
                     for what in ("CREATE", "READ", "READ", "CLEANUP", "CLOSE")]
