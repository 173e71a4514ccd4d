/*
 * ticket.sys: hands out numbered tickets (\Device\Ticket): each read returns
 * "ticket N" and counts on from 1000. Its counter is its only global.
 * Loaded before scribble.sys, its numbers go wrong with no fault anywhere: all
 * drivers share one kernel address space (see scribble.c).
 */
#include <ddk/ntddk.h>

static ULONG next_ticket = 1000;        /* the only object in .data */

static NTSTATUS NTAPI Read(PDEVICE_OBJECT DeviceObject, PIRP Irp)
{
    char *out = Irp->AssociatedIrp.SystemBuffer;
    ULONG length = IoGetCurrentIrpStackLocation(Irp)->Parameters.Read.Length;
    char text[24] = "ticket ";
    ULONG n = 7, value = next_ticket++;
    char digits[12];
    int d = 0;

    (void)DeviceObject;
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

NTSTATUS NTAPI DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNICODE_STRING name;
    PDEVICE_OBJECT device;
    NTSTATUS status;

    (void)RegistryPath;
    RtlInitUnicodeString(&name, (PCWSTR)u"\\Device\\Ticket");
    status = IoCreateDevice(DriverObject, 0, &name, FILE_DEVICE_UNKNOWN, 0, 0, &device);
    if (!NT_SUCCESS(status))
        return status;
    device->Flags |= DO_BUFFERED_IO;
    DriverObject->MajorFunction[IRP_MJ_READ] = Read;
    return STATUS_SUCCESS;
}
