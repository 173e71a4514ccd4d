/*
 * The body shared by buffered.sys, direct.sys and neither.sys: a device whose
 * IRP_MJ_READ dispatch routine copies "data from NAME" into the place its I/O
 * method gives it (SYNC_TARGET) and completes the request at once, in the caller's
 * context. Each prints (DbgPrint) the process it runs in and the address it writes.
 */
#include "device.h"

static const char message[] = "data from " SYNC_NAME;

static NTSTATUS NTAPI Read(PDEVICE_OBJECT DeviceObject, PIRP Irp)
{
    ULONG length = IoGetCurrentIrpStackLocation(Irp)->Parameters.Read.Length;
    ULONG n = length < sizeof(message) ? length : sizeof(message);
    char *target = SYNC_TARGET(Irp);

    (void)DeviceObject;
    DbgPrint(SYNC_NAME ": read of %u bytes in process %llu, writing at %p\n", length,
             (unsigned long long)(ULONG_PTR)PsGetCurrentProcessId(), target);
    RtlCopyMemory(target, message, n);
    return CompleteRequest(Irp, STATUS_SUCCESS, n);
}

NTSTATUS NTAPI DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    PDEVICE_OBJECT device;
    NTSTATUS status = CreateNamedDevice(DriverObject, SYNC_DEVICE, SYNC_FLAGS, &device);

    (void)RegistryPath;
    if (NT_SUCCESS(status))
        DriverObject->MajorFunction[IRP_MJ_READ] = Read;
    return status;
}
