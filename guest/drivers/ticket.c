/*
 * ticket.sys: hands out numbered tickets (\Device\Ticket): each read returns
 * "ticket N" and counts on from 1000. Its counter is its only global.
 * Loaded before scribble.sys, its numbers go wrong with no fault anywhere: all
 * drivers share one kernel address space (see scribble.c).
 */
#include "device.h"

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
    return CompleteRequest(Irp, STATUS_SUCCESS, n);
}

NTSTATUS NTAPI DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    PDEVICE_OBJECT device;
    NTSTATUS status = CreateNamedDevice(DriverObject, (PCWSTR)u"\\Device\\Ticket", DO_BUFFERED_IO, &device);

    (void)RegistryPath;
    if (!NT_SUCCESS(status))
        return status;
    DriverObject->MajorFunction[IRP_MJ_READ] = Read;
    return STATUS_SUCCESS;
}
