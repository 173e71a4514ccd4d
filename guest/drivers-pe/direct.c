/*
 * direct.sys: \Device\Direct, reads with direct I/O: it writes into the caller's frames,
 * mapped at a kernel address through the MDL.
 * Read it with: emu run --driver direct.sys devread '\Device\Direct'
 *
 * Its IRP_MJ_READ dispatch routine copies "data from direct.sys" into the place its I/O
 * method gives it and completes the request at once, in the caller's context. It prints
 * (DbgPrint) the process it runs in and the address it writes. (buffered.c, direct.c and
 * neither.c differ only there: each compiles alone against <ntddk.h>.)
 */
#include <ntddk.h>

static const char message[] = "data from direct.sys";

/* IRP_MJ_CREATE and IRP_MJ_CLOSE: open and close succeed (a driver without these routines
   cannot be opened: Windows' default MajorFunction entry, IopInvalidDeviceRequest, fails
   the request with STATUS_INVALID_DEVICE_REQUEST). */
static NTSTATUS CreateClose(PDEVICE_OBJECT DeviceObject, PIRP Irp)
{
    UNREFERENCED_PARAMETER(DeviceObject);
    Irp->IoStatus.Status = STATUS_SUCCESS;
    Irp->IoStatus.Information = 0;
    IoCompleteRequest(Irp, IO_NO_INCREMENT);
    return STATUS_SUCCESS;
}

static NTSTATUS Read(PDEVICE_OBJECT DeviceObject, PIRP Irp)
{
    ULONG length = IoGetCurrentIrpStackLocation(Irp)->Parameters.Read.Length;
    ULONG n = length < sizeof(message) ? length : sizeof(message);
    char *target = MmGetSystemAddressForMdlSafe(Irp->MdlAddress, NormalPagePriority);

    UNREFERENCED_PARAMETER(DeviceObject);
    DbgPrint("direct.sys: read of %u bytes in process %llu, writing at %p\n", length,
             (unsigned long long)(ULONG_PTR)PsGetCurrentProcessId(), target);
    RtlCopyMemory(target, message, n);
    Irp->IoStatus.Status = STATUS_SUCCESS;
    Irp->IoStatus.Information = n;
    IoCompleteRequest(Irp, IO_NO_INCREMENT);
    return STATUS_SUCCESS;
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNICODE_STRING name;
    PDEVICE_OBJECT device;
    NTSTATUS status;

    UNREFERENCED_PARAMETER(RegistryPath);
    RtlInitUnicodeString(&name, L"\\Device\\Direct");
    status = IoCreateDevice(DriverObject, 0, &name, FILE_DEVICE_UNKNOWN, 0, FALSE, &device);
    if (!NT_SUCCESS(status))
        return status;
    device->Flags |= DO_DIRECT_IO;
    DriverObject->MajorFunction[IRP_MJ_CREATE] = CreateClose;
    DriverObject->MajorFunction[IRP_MJ_CLOSE] = CreateClose;
    DriverObject->MajorFunction[IRP_MJ_READ] = Read;
    return STATUS_SUCCESS;
}
