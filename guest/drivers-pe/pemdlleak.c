/*
 * pemdlleak.sys: locks the caller's buffer and never unlocks it. \Device\PeLeak uses
 * neither buffered nor direct I/O, so IRP_MJ_READ gets the caller's raw address
 * (Irp->UserBuffer): the driver describes it with IoAllocateMdl, locks it with
 * MmProbeAndLockPages, fills it through MmGetSystemAddressForMdlSafe and completes the
 * request, forgetting MmUnlockPages. When the reader ends, Windows stops with bug check
 * 0x76 PROCESS_HAS_LOCKED_PAGES (0, the process, the pages still locked, 0).
 *
 *   emu run --driver pemdlleak.sys devread '\Device\PeLeak'   ->  data: leak, then 0x76
 */
#include <ntddk.h>

static NTSTATUS Complete(PIRP Irp, NTSTATUS Status, ULONG_PTR Information)
{
    Irp->IoStatus.Status = Status;
    Irp->IoStatus.Information = Information;
    IoCompleteRequest(Irp, IO_NO_INCREMENT);
    return Status;
}

static NTSTATUS CreateClose(PDEVICE_OBJECT DeviceObject, PIRP Irp)
{
    UNREFERENCED_PARAMETER(DeviceObject);
    return Complete(Irp, STATUS_SUCCESS, 0);
}

static NTSTATUS Read(PDEVICE_OBJECT DeviceObject, PIRP Irp)
{
    ULONG n = IoGetCurrentIrpStackLocation(Irp)->Parameters.Read.Length;
    PMDL mdl;
    volatile char *out;

    UNREFERENCED_PARAMETER(DeviceObject);
    if (n > 4)
        n = 4;
    mdl = IoAllocateMdl(Irp->UserBuffer, n, FALSE, FALSE, NULL);
    if (!mdl)
        return Complete(Irp, STATUS_INSUFFICIENT_RESOURCES, 0);
    MmProbeAndLockPages(mdl, UserMode, IoWriteAccess);
    out = MmGetSystemAddressForMdlSafe(mdl, NormalPagePriority);
    for (ULONG i = 0; i < n; i++)
        out[i] = "leak"[i];
    /* MmUnlockPages(mdl) and IoFreeMdl(mdl) belong here. */
    return Complete(Irp, STATUS_SUCCESS, n);
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNICODE_STRING name;
    PDEVICE_OBJECT device;
    NTSTATUS status;

    UNREFERENCED_PARAMETER(RegistryPath);
    RtlInitUnicodeString(&name, L"\\Device\\PeLeak");
    status = IoCreateDevice(DriverObject, 0, &name, FILE_DEVICE_UNKNOWN, 0, FALSE, &device);
    if (!NT_SUCCESS(status))
        return status;
    DriverObject->MajorFunction[IRP_MJ_CREATE] = CreateClose;
    DriverObject->MajorFunction[IRP_MJ_CLOSE] = CreateClose;
    DriverObject->MajorFunction[IRP_MJ_READ] = Read;
    return STATUS_SUCCESS;
}
