"""Structured exceptions in PE drivers (emu.nt.seh, emu.nt.unwind): __try/__except/__finally
built by clang into .pdata/.xdata and __C_specific_handler scope tables, dispatched at ring
0 as Windows x64 does; the probes that raise; the bug checks when nothing handles an
exception (0x7E in DriverEntry, 0x3B in a dispatch routine), and __fastfail (0x139)."""

from __future__ import annotations

import struct

import pesource
import pytest

from emu.nt import layout, seh, unwind
from emu.nt.bugcheck import BugCheck, BugCheckCode
from emu.nt.status import NTSTATUS
from tests.nt.driverboot import DRIVERS, boot

PESEH = DRIVERS / "peseh.sys"
GUARDED, UNGUARDED = 0x222403, 0x222407          # CTL_CODE(0x22, 0x900/0x901, NEITHER, ANY)
KERNEL_ADDRESS = 0xFFFF_9000_0000_0000


def lines(m) -> list[str]:
    return bytes(m.executive.debug_output).decode().splitlines()


def request(machine_factory, apps, code, *args):
    return boot(machine_factory, apps, [PESEH],
                ("sehioctl", "\\??\\PeSeh", hex(code), *args))


def test_driver_entry_cases_each_get_their_exception(machine_factory, apps):
    m, (p,), r = request(machine_factory, apps, GUARDED)
    out = lines(m)
    image = r.drivers[0].image
    # The probe's filter read GetExceptionInformation(): ExceptionAddress is the return
    # address in the driver, information (1 = write, MmUserProbeAddress) as ProbeForRead's
    # write to MmUserProbeAddress gives on Windows.
    probe = out[0].split()
    assert probe[:5] == ["peseh.sys:", "probe:", "caught", "0xC0000005", "at"]
    address = int(probe[5].rstrip(","), 16)
    assert image.base < address < image.end
    assert probe[6:] == ["info", "1", f"{layout.MM_USER_PROBE_ADDRESS:016X}"]
    assert out[1:7] == [
        "peseh.sys: misaligned: caught 0x80000002",
        "peseh.sys: finally: inner finally ran 1, abnormal 1; caught 0xC0000005",
        "peseh.sys: nested: inner filter ran 1; outer caught 0xC0000005",
        "peseh.sys: user address: caught 0xC0000005, info 0 0000000000001000",
        "peseh.sys: divide: caught 0xC0000094",
        "peseh.sys: continue: result 7",
    ]
    assert r.bugcheck is None


def test_a_guarded_neither_request_with_good_buffers_succeeds(machine_factory, apps):
    _, (p,), r = request(machine_factory, apps, GUARDED)
    assert p.output == b"status 0x00000000\noutput: hes ,olleh\n"


def test_a_guarded_request_with_a_kernel_address_completes_with_the_exception_code(
        machine_factory, apps):
    m, (p,), r = request(machine_factory, apps, GUARDED, hex(KERNEL_ADDRESS))
    assert p.output == b"status 0xc0000005\n" and p.exit_status == 0
    assert lines(m)[-1] == "peseh.sys: exception 0xC0000005 in the guarded request"
    assert r.bugcheck is None


def test_a_guarded_request_misaligned_or_zero_length(machine_factory, apps):
    # Length 0: ProbeForRead checks nothing, whatever the address (the ProbeForRead page).
    _, (p,), _ = request(machine_factory, apps, GUARDED, hex(KERNEL_ADDRESS), "0")
    assert p.output == b"status 0x00000000\noutput: \n"


def test_a_guarded_request_whose_output_is_read_only_fails_in_probe_for_write(
        machine_factory, apps):
    # The input is fine; the app's output buffer is its own: the request succeeds. A bad
    # input that wraps the address space is STATUS_ACCESS_VIOLATION.
    _, (p,), _ = request(machine_factory, apps, GUARDED, hex(0xFFFF_FFFF_FFFF_FFF0), "64")
    assert p.output == b"status 0xc0000005\n"


def test_an_unguarded_probe_in_a_dispatch_routine_is_bug_check_0x3b(machine_factory, apps):
    m, (p,), r = request(machine_factory, apps, UNGUARDED, hex(KERNEL_ADDRESS))
    bc = r.bugcheck
    assert bc.code == BugCheckCode.SYSTEM_SERVICE_EXCEPTION == 0x3B
    image = r.drivers[0].image
    code, address, context, zero = bc.params
    assert (code, zero) == (NTSTATUS.STATUS_ACCESS_VIOLATION, 0)
    assert image.base < address < image.end                  # the return address
    assert bc.driver == "peseh.sys" and bc.instruction.startswith("call")
    # Parameter 3 is the CONTEXT record: Rip there is the exception address.
    rip = struct.unpack("<Q", m.executive.kernel_read(context + seh.CONTEXT_RIP, 8))[0]
    assert rip == address
    assert p.output == b""


def test_an_unhandled_probe_in_driver_entry_is_bug_check_0x7e(machine_factory, apps):
    m, (p,), r = boot(machine_factory, apps, [DRIVERS / "pesehentry.sys"], ("hello",))
    bc = r.bugcheck
    assert bc.code == BugCheckCode.SYSTEM_THREAD_EXCEPTION_NOT_HANDLED == 0x7E
    code, address, record, context = bc.params
    assert code == NTSTATUS.STATUS_ACCESS_VIOLATION
    ex = m.executive
    # Parameter 3: the EXCEPTION_RECORD (code, flags NONCONTINUABLE, address, and the two
    # parameters of ProbeForRead's write to MmUserProbeAddress); parameter 4: the CONTEXT.
    rec = ex.kernel_read(record, seh.EXCEPTION_RECORD_SIZE)
    assert struct.unpack_from("<IIQQI4xQQ", rec) == (
        code, seh.EXCEPTION_NONCONTINUABLE, 0, address, 2, 1, layout.MM_USER_PROBE_ADDRESS)
    assert struct.unpack("<Q", ex.kernel_read(context + seh.CONTEXT_RIP, 8))[0] == address
    assert lines(m) == ["pesehentry.sys: ProbeForRead of a kernel address, no handler"]
    assert bc.location.startswith("pesehentry.sys!DriverEntry+0x")


def test_fastfail_at_ring_0_is_bug_check_0x139(machine_factory, apps):
    m, _, r = boot(machine_factory, apps, [DRIVERS / "pefastfail.sys"], ("hello",))
    bc = r.bugcheck
    assert bc.code == BugCheckCode.KERNEL_SECURITY_CHECK_FAILURE == 0x139
    assert bc.params[0] == 5 and bc.params[3] == 0 and bc.instruction == "int 0x29"
    ex = m.executive
    frame, record = bc.params[1], bc.params[2]
    # The trap frame's machine frame: RIP after the int 0x29, CS of ring 0.
    rip, cs = struct.unpack("<QQ", ex.kernel_read(frame + 0x168, 16))
    assert (rip, cs) == (bc.rip + 2, 0x10)
    code, flags, _, address, count, info = struct.unpack_from(
        "<IIQQI4xQ", ex.kernel_read(record, seh.EXCEPTION_RECORD_SIZE))
    assert (code, address, count, info) == (NTSTATUS.STATUS_STACK_BUFFER_OVERRUN, bc.rip, 1, 5)


# -- the unwinder on its own -----------------------------------------------------------------

def test_virtual_unwind_undoes_a_frame_pointer_prolog():
    # UNWIND_INFO: version 1, no handler, prolog 0xB, 4 codes, frame register RBP at +32:
    # push rbp (1); push rsi (2); sub rsp, 40 (6); lea rbp, [rsp + 32] (0xB).
    base = 0x1_0000
    info = bytes([0x01, 0x0B, 0x04, 0x25, 0x0B, 0x03, 0x06, 0x42, 0x02, 0x60, 0x01, 0x50])
    memory = {base + 0x100: info}
    stack = 0x8000
    # After the prolog: [rsp+40] = saved rsi, [rsp+48] = saved rbp, [rsp+56] = return.
    words = {stack + 40: 0x5151, stack + 48: 0xBBBB, stack + 56: 0xCAFE}

    def read(va, n):
        for start, data in memory.items():
            if start <= va < start + len(data):
                return data[va - start:va - start + n]
        return b"".join(words.get(va + i, 0).to_bytes(8, "little") for i in range(0, n, 8))

    fn = unwind.RuntimeFunction(base + 0x1000, base + 0x1040, base + 0x100)
    context = {name: 0 for name in unwind.GPR_BY_NUMBER}
    context.update(rip=base + 0x1020, rsp=stack - 0x100, rbp=stack + 32)   # after an alloca
    frame, handler = unwind.virtual_unwind(read, base, fn, context, unwind.UNW_FLAG_EHANDLER)
    assert frame == stack and handler is None
    assert (context["rip"], context["rsp"], context["rsi"], context["rbp"]) == \
        (0xCAFE, stack + 64, 0x5151, 0xBBBB)


def test_the_exception_directory_is_kept_sorted_and_inside_the_image(machine_factory, apps):
    _, _, r = request(machine_factory, apps, GUARDED)
    image = r.drivers[0].image
    assert image.is_pe and image.functions
    assert [f.begin for f in image.functions] == sorted(f.begin for f in image.functions)
    assert all(image.base <= f.begin < f.end <= image.end for f in image.functions)
    assert unwind.lookup(image.functions, image.entry) is not None


def test_the_raise_routines_and_rtl_assert_are_caught_and_ke_bug_check_stops(
        machine_factory, apps):
    m, _, r = boot(machine_factory, apps, [DRIVERS / "peraise.sys"], ("hello",))
    assert lines(m) == [
        "peraise.sys: ExRaiseStatus: caught 0xE0000001, flags 1, 0 parameters",
        # CONTINUE_EXECUTION for a noncontinuable exception: STATUS_NONCONTINUABLE_EXCEPTION,
        # its ExceptionRecord the original one.
        "peraise.sys: noncontinuable: caught 0xC0000025 (the record chains 0xE0000002)",
        # ProbeForWrite reads each page first: an unmapped user page is (0 = read, address).
        "peraise.sys: ProbeForWrite: caught 0xC0000005, info 0 0000000000010000",
        "",
        "*** Assertion failed: peraise: 1 == 2",
        "***   Source File: peraise.c, line 42",
        "",
        "peraise.sys: RtlAssert: caught 0x80000003",
        "peraise.sys: int3: caught 0x80000003",
        "peraise.sys: ud2: caught 0xC000001D",
        "peraise.sys: KeBugCheck(0xE2)",
    ]
    bc = r.bugcheck
    assert bc.code == BugCheckCode.MANUALLY_INITIATED_CRASH and bc.params == (0, 0, 0, 0)
    assert bc.location.startswith("peraise.sys!DriverEntry+0x")


def test_an_unhandled_fault_in_a_dpc_is_0x1e(machine_factory, apps):
    # PE code (peseh.sys's Divide, named by its PDB) run as a DPC divides by zero with
    # nothing to catch it: KiDispatchException's own 0x1E (code, address, information[0],
    # information[1]).
    m, _, r = request(machine_factory, apps, GUARDED)
    divide = r.drivers[0].image.symbols["Divide"]
    with pytest.raises(BugCheck) as info:
        m.executive.run_at_irql(2, divide, (100, 0), None)
    bc = info.value
    assert bc.code == BugCheckCode.KMODE_EXCEPTION_NOT_HANDLED
    assert bc.params == (NTSTATUS.STATUS_INTEGER_DIVIDE_BY_ZERO, bc.rip, 0, 0)
    assert bc.instruction == "idiv ecx" and bc.location.startswith("peseh.sys!Divide+0x")


@pytest.mark.parametrize("irql", [0, 1, 2])
def test_the_same_fault_outside_a_thread_is_0x7e_at_any_irql(machine_factory, apps, irql):
    # Outside a thread, an ISR, a DPC and a service is where DriverEntry and DriverUnload
    # run (Windows: in a system thread), whatever IRQL the driver raised itself to: the
    # system thread's filter is on the walk's way, 0x7E (code, address, record, context).
    m, _, r = request(machine_factory, apps, GUARDED)
    divide = r.drivers[0].image.symbols["Divide"]
    m.executive.irql = irql
    with pytest.raises(BugCheck) as info:
        m.executive.call_kernel(divide, 100, 0)
    assert info.value.code == BugCheckCode.SYSTEM_THREAD_EXCEPTION_NOT_HANDLED
    assert info.value.params[:2] == (NTSTATUS.STATUS_INTEGER_DIVIDE_BY_ZERO, info.value.rip)


# -- the records' layout against the WDK's headers ------------------------------------------

LAYOUT = [("sizeof(EXCEPTION_RECORD)", seh.EXCEPTION_RECORD_SIZE),
          ("__builtin_offsetof(EXCEPTION_RECORD, ExceptionFlags)", 4),
          ("__builtin_offsetof(EXCEPTION_RECORD, ExceptionRecord)", 8),
          ("__builtin_offsetof(EXCEPTION_RECORD, ExceptionAddress)", 0x10),
          ("__builtin_offsetof(EXCEPTION_RECORD, NumberParameters)", 0x18),
          ("__builtin_offsetof(EXCEPTION_RECORD, ExceptionInformation)", 0x20),
          ("sizeof(CONTEXT)", seh.CONTEXT_SIZE),
          ("__builtin_offsetof(CONTEXT, ContextFlags)", 0x30),
          ("__builtin_offsetof(CONTEXT, MxCsr)", seh.CONTEXT_MXCSR),
          ("__builtin_offsetof(CONTEXT, SegCs)", seh.CONTEXT_SEG_CS),
          ("__builtin_offsetof(CONTEXT, EFlags)", seh.CONTEXT_EFLAGS),
          ("__builtin_offsetof(CONTEXT, Rax)", seh.CONTEXT_RAX),
          ("__builtin_offsetof(CONTEXT, Rsp)", seh.CONTEXT_RAX + 8 * 4),
          ("__builtin_offsetof(CONTEXT, R15)", seh.CONTEXT_RAX + 8 * 15),
          ("__builtin_offsetof(CONTEXT, Rip)", seh.CONTEXT_RIP),
          ("__builtin_offsetof(CONTEXT, Xmm0)", seh.CONTEXT_XMM0),
          ("CONTEXT_AMD64 | CONTEXT_CONTROL | CONTEXT_INTEGER | CONTEXT_SEGMENTS"
           " | CONTEXT_FLOATING_POINT", seh.CONTEXT_FLAGS),
          ("__builtin_offsetof(CONTEXT, FltSave.MxCsr)", seh.CONTEXT_FLTSAVE_MXCSR),
          ("EXCEPTION_NONCONTINUABLE", seh.EXCEPTION_NONCONTINUABLE),
          ("(ULONG)STATUS_NONCONTINUABLE_EXCEPTION", seh.STATUS_NONCONTINUABLE_EXCEPTION),
          # (mingw's bugcodes.h has neither 0x3B nor 0x139)
          ("SYSTEM_THREAD_EXCEPTION_NOT_HANDLED",
           BugCheckCode.SYSTEM_THREAD_EXCEPTION_NOT_HANDLED),
          ("KMODE_EXCEPTION_NOT_HANDLED", BugCheckCode.KMODE_EXCEPTION_NOT_HANDLED)]


def test_the_records_are_laid_out_as_the_wdk_headers_say(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    import pefile
    import ziglang

    ddk = Path(ziglang.__file__).parent / "lib" / "libc" / "include" / "any-windows-any" / "ddk"
    source = ["#include <ntddk.h>", "#include <bugcodes.h>",
              "__declspec(dllexport) const unsigned long long layout[] = {",
              *[f"    (unsigned long long)({expr})," for expr, _ in LAYOUT], "};",
              "NTSTATUS NTAPI DriverEntry(PDRIVER_OBJECT d, PUNICODE_STRING r)",
              "{ (void)d; (void)r; return 0; }"]
    (tmp_path / "probe.c").write_text("\n".join(source) + "\n")
    env = {**os.environ, "ZIG_GLOBAL_CACHE_DIR": str(tmp_path / "zc"),
           "ZIG_LOCAL_CACHE_DIR": str(tmp_path / "zc")}
    cc = [sys.executable, "-m", "ziglang", "cc", "-target", "x86_64-windows-gnu"]
    for command in ([*cc, "-O2", f"-I{ddk}", "-c", "probe.c", "-o", "probe.o"],
                    [*cc, "-shared", "-nostdlib", "-Wl,--subsystem,native",
                     "-Wl,--entry,DriverEntry", "probe.o", "-o", "probe.sys"]):
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    pe = pefile.PE(str(tmp_path / "probe.sys"))
    (symbol,) = [s for s in pe.DIRECTORY_ENTRY_EXPORT.symbols if s.name == b"layout"]
    values = struct.unpack(f"<{len(LAYOUT)}Q", pe.get_data(symbol.address, 8 * len(LAYOUT)))
    assert dict(zip([e for e, _ in LAYOUT], values, strict=True)) == dict(LAYOUT)


# -- symbols from the PDB --------------------------------------------------------------------

def _load(path):
    from emu.nt import pe

    return pe.parse_pe_driver(path.read_bytes(), str(path), layout.KERNEL_DRIVERS)


def test_static_functions_are_named_from_the_pdb_beside_the_image(tmp_path):
    import shutil

    shutil.copy(PESEH, tmp_path / "peseh.sys")
    assert "Reverse" not in _load(tmp_path / "peseh.sys").symbols      # no PDB: exports
    shutil.copy(DRIVERS / "peraise.pdb", tmp_path / "peseh.pdb")         # another build's
    assert "Reverse" not in _load(tmp_path / "peseh.sys").symbols
    (tmp_path / "peseh.pdb").write_bytes(b"not a PDB")
    assert _load(tmp_path / "peseh.sys").symbols.keys() == {"DriverEntry"}
    shutil.copy(DRIVERS / "peseh.pdb", tmp_path / "peseh.pdb")
    image = _load(tmp_path / "peseh.sys")
    assert image.pdb == str(tmp_path / "peseh.pdb")
    code = next(s for s in image.sections if s.name == ".text")
    for name in ("Reverse", "DeviceControl", "ProbeCase", "__filt_ProbeCase", "DriverEntry"):
        assert code.va <= image.symbols[name] < code.va + code.size


def test_a_user_buffer_that_passes_the_probe_but_is_not_there_is_caught(machine_factory,
                                                                       apps):
    # sioctl's lesson: ProbeForRead checks the range only; the driver's own read of an
    # unmapped user page (in Reverse, called inside the __try) is a page fault on a user
    # address at PASSIVE_LEVEL: STATUS_ACCESS_VIOLATION, dispatched to the __except.
    m, (p,), r = request(machine_factory, apps, GUARDED, "0x10000")
    assert p.output == b"status 0xc0000005\n" and r.bugcheck is None
    assert lines(m)[-1] == "peseh.sys: exception 0xC0000005 in the guarded request"


def test_the_same_read_with_no_handler_is_0x3b_at_the_faulting_read(machine_factory, apps):
    m, _, r = request(machine_factory, apps, UNGUARDED, "0x10000")
    bc = r.bugcheck
    assert bc.code == BugCheckCode.SYSTEM_SERVICE_EXCEPTION
    assert bc.params[:2] == (NTSTATUS.STATUS_ACCESS_VIOLATION, bc.rip)
    assert bc.location.startswith("peseh.sys!Reverse+0x") and "byte ptr" in bc.instruction
    # The stack, unwound: Reverse, called by DeviceControl.
    assert bc.backtrace[0] == bc.location
    assert bc.backtrace[1].startswith("peseh.sys!DeviceControl+0x") and len(bc.backtrace) == 2
    # The CONTEXT (parameter 3) holds the faulting RIP.
    assert struct.unpack("<Q", m.executive.kernel_read(bc.params[2] + seh.CONTEXT_RIP, 8))[0] \
        == bc.rip


ISR_RAISES = r"""
#include <ntddk.h>
static PKINTERRUPT interrupt;
static KEVENT never;

BOOLEAN Isr(PKINTERRUPT Interrupt, PVOID Context)
{
    UNREFERENCED_PARAMETER(Interrupt);
    UNREFERENCED_PARAMETER(Context);
    ExRaiseStatus(0xE0000001);
    return TRUE;
}

static NTSTATUS Complete(PDEVICE_OBJECT DeviceObject, PIRP Irp)
{
    UNREFERENCED_PARAMETER(DeviceObject);
    Irp->IoStatus.Status = STATUS_SUCCESS;
    Irp->IoStatus.Information = 0;
    IoCompleteRequest(Irp, IO_NO_INCREMENT);
    return STATUS_SUCCESS;
}

static NTSTATUS Read(PDEVICE_OBJECT DeviceObject, PIRP Irp)
{
    __outdword(0x300, 1);                       /* the slow device: START */
    KeWaitForSingleObject(&never, Executive, KernelMode, FALSE, NULL);
    return Complete(DeviceObject, Irp);
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNICODE_STRING name;
    PDEVICE_OBJECT device;
    NTSTATUS status;

    UNREFERENCED_PARAMETER(RegistryPath);
    KeInitializeEvent(&never, SynchronizationEvent, FALSE);
    RtlInitUnicodeString(&name, L"\\Device\\IsrRaises");
    status = IoCreateDevice(DriverObject, 0, &name, FILE_DEVICE_UNKNOWN, 0, FALSE, &device);
    if (!NT_SUCCESS(status))
        return status;
    device->Flags |= DO_BUFFERED_IO;
    status = IoConnectInterrupt(&interrupt, Isr, NULL, NULL, 0x31, 5, 5, Latched, FALSE, 1,
                                FALSE);
    if (!NT_SUCCESS(status))
        return status;
    DriverObject->MajorFunction[IRP_MJ_CREATE] = Complete;
    DriverObject->MajorFunction[IRP_MJ_CLOSE] = Complete;
    DriverObject->MajorFunction[IRP_MJ_READ] = Read;
    return STATUS_SUCCESS;
}
"""


def test_an_unhandled_exception_in_an_isr_taken_during_a_dispatch_routine_is_0x1e(
        machine_factory, apps, tmp_path):
    # The ISR interrupts a dispatch routine that waits for its device, in a system service;
    # the walk stops at the ISR's own return trap, and it is an ISR that did not handle its
    # exception: 0x1E (code, address, information[0], information[1]), not the system
    # service's 0x3B.
    image = pesource.build_sources(tmp_path, {"isrraises": ISR_RAISES})["isrraises"]
    m, (p,), r = boot(machine_factory, apps, [image], ("devread", "\\Device\\IsrRaises"))
    bc = r.bugcheck
    assert bc.code == BugCheckCode.KMODE_EXCEPTION_NOT_HANDLED
    assert bc.params[0] == 0xE000_0001 and bc.params[2:] == (0, 0)
    assert bc.location.startswith("isrraises.sys!Isr+")
