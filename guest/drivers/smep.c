/*
 * smep.sys: ring 0 jumping into user memory (\Device\Smep). Its read dispatch
 * routine runs in the caller's context and calls the caller's buffer as code. With
 * CR4.SMEP the CPU refuses to fetch a user page at ring 0, whatever it holds: bug
 * check 0xFC (the classic way an exploit would run its payload, stopped by the
 * hardware).
 */
#include "device.h"

typedef void (*routine)(void);

static NTSTATUS NTAPI Read(PDEVICE_OBJECT DeviceObject, PIRP Irp)
{
    (void)DeviceObject;
    DbgPrint("smep.sys: calling the user buffer at %p from ring 0\n", Irp->UserBuffer);
    ((routine)Irp->UserBuffer)();
    return CompleteRequest(Irp, STATUS_SUCCESS, 0);
}

NTSTATUS NTAPI DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    PDEVICE_OBJECT device;
    NTSTATUS status = CreateNamedDevice(DriverObject, (PCWSTR)u"\\Device\\Smep", 0, &device);

    (void)RegistryPath;
    if (!NT_SUCCESS(status))
        return status;
    DriverObject->MajorFunction[IRP_MJ_READ] = Read;
    return STATUS_SUCCESS;
}
