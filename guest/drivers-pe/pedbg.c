/*
 * pedbg.sys: DbgPrintEx, vDbgPrintEx and KdPrintEx, and the Ps/Io routines that say which
 * process and thread a driver runs in, from DriverEntry (the System process, id 4) and from
 * a dispatch routine (the app that opened \Device\PeDbg).
 *
 * DbgPrintEx prints only what the filter lets through: here, as on Windows with no
 * "Debug Print Filter" set, DPFLTR_ERROR_LEVEL messages (Level 0, or a mask with bit 0).
 */
#define DBG 1                      /* KdPrintEx is DbgPrintEx only in a checked (DBG) build */
#include <ntddk.h>

/* Declared in ntifs.h, not ntddk.h; exported by ntoskrnl.exe (and in its import library). */
NTKERNELAPI ULONG NTAPI IoGetRequestorProcessId(PIRP Irp);
NTKERNELAPI BOOLEAN NTAPI PsIsSystemThread(PETHREAD Thread);

static void Say(ULONG Level, PCSTR Format, ...)
{
    va_list args;

    va_start(args, Format);
    vDbgPrintEx(DPFLTR_IHVDRIVER_ID, Level, Format, args);
    va_end(args);
}

static void Where(PCSTR When)
{
    PEPROCESS process = IoGetCurrentProcess();

    DbgPrint("pedbg.sys: %s: process %u (PsGetProcessId %u, PsGetCurrentProcess same %d), "
             "thread %u, 32-bit %d\n", When, (ULONG)(ULONG_PTR)PsGetCurrentProcessId(),
             (ULONG)(ULONG_PTR)PsGetProcessId(process), PsGetCurrentProcess() == process,
             (ULONG)(ULONG_PTR)PsGetCurrentThreadId(), IoIs32bitProcess(NULL));
}

static NTSTATUS Create(PDEVICE_OBJECT DeviceObject, PIRP Irp)
{
    UNREFERENCED_PARAMETER(DeviceObject);
    Where("IRP_MJ_CREATE");
    DbgPrint("pedbg.sys: requestor %u, 32-bit %d\n", IoGetRequestorProcessId(Irp),
             IoIs32bitProcess(Irp));
    DbgPrint("pedbg.sys: Irp->Tail.Overlay.Thread: thread %u of process %u, system thread %d\n",
             (ULONG)(ULONG_PTR)PsGetThreadId(Irp->Tail.Overlay.Thread),
             (ULONG)(ULONG_PTR)PsGetThreadProcessId(Irp->Tail.Overlay.Thread),
             PsIsSystemThread(Irp->Tail.Overlay.Thread));
    Irp->IoStatus.Status = STATUS_SUCCESS;
    Irp->IoStatus.Information = 0;
    IoCompleteRequest(Irp, IO_NO_INCREMENT);
    return STATUS_SUCCESS;
}

/* Every open gets an IRP_MJ_CLOSE when its last handle goes: without this routine it would
 * reach IopInvalidDeviceRequest, the I/O manager's default. */
static NTSTATUS Close(PDEVICE_OBJECT DeviceObject, PIRP Irp)
{
    UNREFERENCED_PARAMETER(DeviceObject);
    Irp->IoStatus.Status = STATUS_SUCCESS;
    Irp->IoStatus.Information = 0;
    IoCompleteRequest(Irp, IO_NO_INCREMENT);
    return STATUS_SUCCESS;
}

static VOID Unload(PDRIVER_OBJECT DriverObject)
{
    Where("DriverUnload");
    IoDeleteDevice(DriverObject->DeviceObject);
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNICODE_STRING name;
    PDEVICE_OBJECT device;
    NTSTATUS status;

    UNREFERENCED_PARAMETER(RegistryPath);
    DbgPrintEx(DPFLTR_IHVDRIVER_ID, DPFLTR_ERROR_LEVEL, "pedbg.sys: error level %d %s\n", 0,
               "prints");
    DbgPrintEx(DPFLTR_IHVDRIVER_ID, DPFLTR_WARNING_LEVEL, "pedbg.sys: warning level\n");
    DbgPrintEx(DPFLTR_IHVDRIVER_ID, DPFLTR_TRACE_LEVEL, "pedbg.sys: trace level\n");
    DbgPrintEx(DPFLTR_IHVDRIVER_ID, DPFLTR_INFO_LEVEL, "pedbg.sys: info level\n");
    DbgPrintEx(DPFLTR_IHVDRIVER_ID, DPFLTR_MASK | 0x3, "pedbg.sys: mask 0x3 prints\n");
    DbgPrintEx(DPFLTR_IHVDRIVER_ID, DPFLTR_MASK | 0x8, "pedbg.sys: mask 0x8\n");
    Say(DPFLTR_ERROR_LEVEL, "pedbg.sys: vDbgPrintEx %s %d %x %wZ\n", "five", 5, 0x5,
        RegistryPath);
    Say(DPFLTR_INFO_LEVEL, "pedbg.sys: vDbgPrintEx info\n");
    KdPrintEx((DPFLTR_IHVDRIVER_ID, DPFLTR_ERROR_LEVEL, "pedbg.sys: KdPrintEx %u\n", 42u));
    Where("DriverEntry");

    RtlInitUnicodeString(&name, L"\\Device\\PeDbg");
    status = IoCreateDevice(DriverObject, 0, &name, FILE_DEVICE_UNKNOWN, 0, FALSE, &device);
    if (!NT_SUCCESS(status))
        return status;
    DriverObject->MajorFunction[IRP_MJ_CREATE] = Create;
    DriverObject->MajorFunction[IRP_MJ_CLOSE] = Close;
    DriverObject->DriverUnload = Unload;
    return STATUS_SUCCESS;
}
