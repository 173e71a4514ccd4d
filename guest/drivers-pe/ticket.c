/*
 * ticket.sys: hands out numbered tickets (\Device\Ticket): each read returns
 * "ticket N" and counts on from 1000. Its counter is its only global.
 * Loaded before scribble.sys, its numbers go wrong with no fault anywhere: all
 * drivers share one kernel address space (see scribble.c).
 */
#include <ntddk.h>

static ULONG next_ticket = 1000;        /* the only object in .data */

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
    char *out = Irp->AssociatedIrp.SystemBuffer;
    ULONG length = IoGetCurrentIrpStackLocation(Irp)->Parameters.Read.Length;
    char text[24] = "ticket ";
    ULONG n = 7, value = next_ticket++;
    char digits[12];
    int d = 0;

    UNREFERENCED_PARAMETER(DeviceObject);
    do {
        digits[d++] = (char)('0' + value % 10);
        value /= 10;
    } while (value != 0);
    while (d > 0)
        text[n++] = digits[--d];
    text[n++] = 0;
    if (n > length)
        n = length;
    RtlCopyMemory(out, text, n);
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
    RtlInitUnicodeString(&name, L"\\Device\\Ticket");
    status = IoCreateDevice(DriverObject, 0, &name, FILE_DEVICE_UNKNOWN, 0, FALSE, &device);
    if (!NT_SUCCESS(status))
        return status;
    device->Flags |= DO_BUFFERED_IO;
    DriverObject->MajorFunction[IRP_MJ_CREATE] = CreateClose;
    DriverObject->MajorFunction[IRP_MJ_CLOSE] = CreateClose;
    DriverObject->MajorFunction[IRP_MJ_READ] = Read;
    return STATUS_SUCCESS;
}
