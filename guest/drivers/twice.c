/*
 * twice.sys: completes the same read IRP twice (\Device\Twice). The I/O manager
 * owns an IRP once it is completed: the second IoCompleteRequest is bug check
 * 0x44 MULTIPLE_IRP_COMPLETE_REQUESTS (the IRP's address as parameter 1).
 */
#include "device.h"

static NTSTATUS NTAPI Read(PDEVICE_OBJECT DeviceObject, PIRP Irp)
{
    (void)DeviceObject;
    Irp->IoStatus.Status = STATUS_SUCCESS;
    Irp->IoStatus.Information = 0;
    IoCompleteRequest(Irp, IO_NO_INCREMENT);
    IoCompleteRequest(Irp, IO_NO_INCREMENT);        /* the bug */
    return STATUS_SUCCESS;
}

NTSTATUS NTAPI DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    PDEVICE_OBJECT device;
    NTSTATUS status = CreateNamedDevice(DriverObject, (PCWSTR)u"\\Device\\Twice", DO_BUFFERED_IO, &device);

    (void)RegistryPath;
    if (!NT_SUCCESS(status))
        return status;
    DriverObject->MajorFunction[IRP_MJ_READ] = Read;
    return STATUS_SUCCESS;
}
