"""A breakpoint on a kernel export (`break nt!DbgPrint`) stops when a driver calls it, before
the routine runs, as WinDbg's does: RIP the export's address, the arguments in RCX/RDX/R8/R9
and the return address at [RSP], `bt` naming the calling driver routine; `continue` then
runs the export. Going back finds the stop again (the routine is one step of its own)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import emurun
import pesource
import pytest

from emu.nt import exports, ntos  # noqa: F401 (ntos registers the exports)

ROOT = Path(__file__).resolve().parents[2]
APPS = Path("guest") / "build" / "apps"

# Each dispatch routine prints one line through DbgPrint: CREATE, READ, CLEANUP, CLOSE.
PEBP = r"""
#include <ntddk.h>

static NTSTATUS Say(PCSTR what, PIRP Irp)
{
    DbgPrint("pebp: %s %u\n", what, 7);
    Irp->IoStatus.Status = STATUS_SUCCESS;
    Irp->IoStatus.Information = 0;
    IoCompleteRequest(Irp, IO_NO_INCREMENT);
    return STATUS_SUCCESS;
}

static NTSTATUS Create(PDEVICE_OBJECT D, PIRP Irp)
{
    UNREFERENCED_PARAMETER(D);
    return Say("CREATE", Irp);
}

static NTSTATUS Read(PDEVICE_OBJECT D, PIRP Irp)
{
    UNREFERENCED_PARAMETER(D);
    return Say("READ", Irp);
}

static NTSTATUS Cleanup(PDEVICE_OBJECT D, PIRP Irp)
{
    UNREFERENCED_PARAMETER(D);
    return Say("CLEANUP", Irp);
}

static NTSTATUS Close(PDEVICE_OBJECT D, PIRP Irp)
{
    UNREFERENCED_PARAMETER(D);
    return Say("CLOSE", Irp);
}


NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNICODE_STRING name;
    PDEVICE_OBJECT device;

    UNREFERENCED_PARAMETER(RegistryPath);
    RtlInitUnicodeString(&name, L"\\Device\\PeBp");
    DriverObject->MajorFunction[IRP_MJ_CREATE] = Create;
    DriverObject->MajorFunction[IRP_MJ_READ] = Read;
    DriverObject->MajorFunction[IRP_MJ_CLEANUP] = Cleanup;
    DriverObject->MajorFunction[IRP_MJ_CLOSE] = Close;
    return IoCreateDevice(DriverObject, 0, &name, FILE_DEVICE_UNKNOWN, 0, FALSE, &device);
}
"""


@pytest.fixture(scope="module")
def driver(tmp_path_factory, apps) -> Path:
    return pesource.build_sources(tmp_path_factory.mktemp("drivers"), {"pebp": PEBP})["pebp"]


def debug(driver: Path, script: str) -> subprocess.CompletedProcess:
    """``emu debug`` of devread with ``driver``, ``script`` on standard input, in a fork
    (tests/emurun.py)."""
    return emurun.emu("debug", "--driver", driver, APPS / "devread", "\\Device\\PeBp",
                      input=script, cwd=ROOT, timeout=120)


def after(out: str, command: str) -> list[str]:
    """The lines a command printed (up to the next prompt), for its last run."""
    text = out.rsplit(f") {command}\n", 1)[1]
    return text.split("(emu", 1)[0].splitlines()


DBGPRINT = exports.address_of("DbgPrint")


def test_a_breakpoint_on_dbgprint_stops_before_it_runs_with_the_call_s_state(driver):
    r = debug(driver, "break nt!DbgPrint\ncontinue\ninfo registers rip r8\nx/s $rcx\n"
                      "x/s $rdx\nbt\ncontinue\n")
    assert r.returncode == 0, r.stderr
    assert f"Breakpoint 1 at {DBGPRINT:#x} <nt!DbgPrint>" in r.stdout
    stop = after(r.stdout, "continue")          # the second continue: the READ's call
    first = r.stdout.split(") continue\n", 1)[1].split("(emu", 1)[0]
    assert "pebp: CREATE" not in first              # stopped before the routine printed
    assert first.splitlines()[0] == "Breakpoint 1, nt!DbgPrint"
    assert first.splitlines()[1].startswith(f"=> {DBGPRINT:#x} <nt!DbgPrint>: (a kernel export: "
                                            "the executive runs it)")
    assert after(r.stdout, "info registers rip r8") == [f"rip = {DBGPRINT:#x} ({DBGPRINT})",
                                                       "r8 = 0x7 (7)"]
    assert after(r.stdout, "x/s $rcx")[0].endswith('"pebp: %s %u\\n"')
    assert after(r.stdout, "x/s $rdx")[0].endswith('"CREATE"')
    bt = after(r.stdout, "bt")
    assert bt[0] == f"#0  {DBGPRINT:#018x} in nt!DbgPrint"
    assert bt[1].split(" in ", 1)[1].startswith("pebp.sys!Create+0x")
    assert stop[0] == "pebp: CREATE 7"              # continue ran the export
    assert stop[1] == "Breakpoint 1, nt!DbgPrint"


def test_the_return_address_is_at_rsp_and_stepi_runs_the_export_as_one_step(driver):
    r = debug(driver, "break nt!DbgPrint\ncontinue\nx/gx $rsp\nstepi\ninfo registers rip\n"
                      "reverse-stepi\ninfo registers rip\n")
    assert r.returncode == 0, r.stderr
    ret = int(after(r.stdout, "x/gx $rsp")[0].split()[1], 16)
    assert after(r.stdout, "stepi")[0] == "pebp: CREATE 7"
    assert after(r.stdout, "info registers rip")[0] == f"rip = {DBGPRINT:#x} ({DBGPRINT})"
    first_rip = r.stdout.split(") info registers rip\n", 1)[1].splitlines()[0]
    assert first_rip == f"rip = {ret:#x} ({ret})"   # after stepi: back in the caller


def test_reverse_continue_finds_the_breakpoint_on_the_export(driver):
    r = debug(driver, "break nt!DbgPrint\ncontinue\ncontinue\ncontinue\nreverse-continue\nbt\n")
    assert r.returncode == 0, r.stderr
    assert after(r.stdout, "reverse-continue")[0] == "Breakpoint 1, nt!DbgPrint"
    assert after(r.stdout, "bt")[1].split(" in ", 1)[1].startswith("pebp.sys!Read+0x")


def test_conditional_and_temporary_breakpoints_on_an_export(driver):
    """A condition false at every call never stops; a temporary breakpoint stops at the
    first call (CREATE's) and is gone: the rest runs to the end."""
    r = debug(driver, "break nt!DbgPrint if $r8 == 8\ntbreak nt!DbgPrint\ncontinue\nbt\n"
                      "continue\ninfo breakpoints\n")
    assert r.returncode == 0, r.stderr
    assert after(r.stdout, "bt")[1].split(" in ", 1)[1].startswith("pebp.sys!Create+0x")
    assert r.stdout.split(") continue\n", 1)[1].startswith("Breakpoint 2, nt!DbgPrint\n")
    end = after(r.stdout, "continue")
    assert [line for line in end if line.startswith("pebp: ")] == [
        "pebp: CREATE 7", "pebp: READ 7", "pebp: CLEANUP 7", "pebp: CLOSE 7"]
    assert "the machine has stopped: every process has ended" in end
    table = after(r.stdout, "info breakpoints")
    assert [line.split()[:4] for line in table[1:]] == [["1", "breakpoint", "y", "0"]]


def test_a_gdb_breakpoint_on_the_export_s_address_stops_there(driver):
    """Through the gdb stub: Z0 at DbgPrint's address stops with RIP there and the return
    address at [RSP]; the next `c` runs DbgPrint and stops at its next call."""
    from tests.debugger.test_gdbstub import handshake, served

    with served(("devread", ["\\Device\\PeBp"]), drivers=(str(driver),)) as s:
        c = s.client
        handshake(c)
        assert c.cmd(f"Z0,{DBGPRINT:x},1") == b"OK"
        assert c.cmd("c").startswith(b"T05swbreak:;")
        assert c.register("rip") == DBGPRINT
        assert c.register("r8") == 7
        assert b"pebp: CREATE" not in s.machine.executive.debug_output    # not run yet
        assert c.cmd("c").startswith(b"T05swbreak:;")
        assert s.machine.executive.debug_output.endswith(b"pebp: CREATE 7\n")
        assert c.register("rip") == DBGPRINT
        assert c.cmd(f"z0,{DBGPRINT:x},1") == b"OK"
        assert c.cmd("c") == b"W00"
        s.finish()
