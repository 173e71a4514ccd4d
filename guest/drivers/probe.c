/*
 * probe.sys: neither I/O done carefully (\Device\Probe). The read dispatch routine
 * runs in the caller's context but still trusts nothing: ProbeForWrite checks the
 * caller's address is a writable user address, and MmCopyToUser copies with a
 * guard. A kernel address from the app (devread \Device\Probe 16 0xffff800000000000)
 * gets STATUS_ACCESS_VIOLATION back; nothing crashes, nothing is overwritten.
 * (neither.sys, which copies blindly, would write that kernel address.)
 */
#include "device.h"

static const char message[] = "data from probe.sys";

static NTSTATUS NTAPI Read(PDEVICE_OBJECT DeviceObject, PIRP Irp)
{
    ULONG length = IoGetCurrentIrpStackLocation(Irp)->Parameters.Read.Length;
    ULONG n = length < sizeof(message) ? length : sizeof(message);
    NTSTATUS status = ProbeForWrite(Irp->UserBuffer, length, 1);

    (void)DeviceObject;
    if (NT_SUCCESS(status))
        status = MmCopyToUser(Irp->UserBuffer, message, n);
    DbgPrint("probe.sys: buffer %p: status 0x%08x\n", Irp->UserBuffer, (unsigned)status);
    return CompleteRequest(Irp, status, NT_SUCCESS(status) ? n : 0);
}

NTSTATUS NTAPI DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    PDEVICE_OBJECT device;
    NTSTATUS status = CreateNamedDevice(DriverObject, (PCWSTR)u"\\Device\\Probe", 0, &device);

    (void)RegistryPath;
    if (!NT_SUCCESS(status))
        return status;
    DriverObject->MajorFunction[IRP_MJ_READ] = Read;
    return STATUS_SUCCESS;
}
