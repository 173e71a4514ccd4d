/*
 * bugcheck.sys: a driver that stops the machine on purpose, as a driver
 * does when it finds its own state corrupt: KeBugCheckEx never returns.
 *
 * The emulator should print
 *   bugcheck.sys: calling KeBugCheckEx(0xE2, 1, 2, 3, 4)
 * and then bug-check 0xE2 MANUALLY_INITIATED_CRASH with parameters
 * (1, 2, 3, 4): the fifth argument (P4) travels on the stack, above the
 * 32-byte shadow space, so the four parameters check the convention too.
 * Every process stops.
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
    DbgPrint("bugcheck.sys: calling KeBugCheckEx(0x%X, 1, 2, 3, 4)\n",
             MANUALLY_INITIATED_CRASH);
    KeBugCheckEx(MANUALLY_INITIATED_CRASH, 1, 2, 3, 4);
}
