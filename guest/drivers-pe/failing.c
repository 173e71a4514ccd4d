/*
 * failing.sys: DriverEntry reports failure. Nothing is wrong with the
 * machine: a driver that cannot start (missing hardware, bad configuration)
 * returns an error status, and the kernel unloads it and goes on.
 *
 * The emulator should print
 *   failing.sys: DriverEntry returns STATUS_UNSUCCESSFUL
 * then report that the driver's DriverEntry returned 0xC0000001
 * (STATUS_UNSUCCESSFUL), unload it (its pages are freed) and keep running
 * everything else.
 */
#include <ntddk.h>

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

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNREFERENCED_PARAMETER(RegistryPath);

    DriverObject->MajorFunction[IRP_MJ_CREATE] = CreateClose;
    DriverObject->MajorFunction[IRP_MJ_CLOSE] = CreateClose;
    DbgPrint("failing.sys: DriverEntry returns STATUS_UNSUCCESSFUL\n");
    return STATUS_UNSUCCESSFUL;
}
