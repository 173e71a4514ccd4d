/*
 * echo.sys: \Device\Echo keeps what you write and gives it back when you read
 * (buffered I/O both ways). Its IRP_MJ_CREATE and IRP_MJ_CLOSE routines say who opened
 * and closed it.
 */
#include "device.h"

static char stored[64];
static ULONG stored_length;

static NTSTATUS NTAPI Create(PDEVICE_OBJECT DeviceObject, PIRP Irp)
{
    (void)DeviceObject;
    DbgPrint("echo.sys: opened by process %llu\n",
             (unsigned long long)(ULONG_PTR)PsGetCurrentProcessId());
    return CompleteRequest(Irp, STATUS_SUCCESS, 0);
}

static NTSTATUS NTAPI Close(PDEVICE_OBJECT DeviceObject, PIRP Irp)
{
    (void)DeviceObject;
    DbgPrint("echo.sys: closed by process %llu\n",
             (unsigned long long)(ULONG_PTR)PsGetCurrentProcessId());
    return CompleteRequest(Irp, STATUS_SUCCESS, 0);
}

static NTSTATUS NTAPI Write(PDEVICE_OBJECT DeviceObject, PIRP Irp)
{
    ULONG length = IoGetCurrentIrpStackLocation(Irp)->Parameters.Write.Length;

    (void)DeviceObject;
    if (length > sizeof(stored))
        length = sizeof(stored);
    RtlCopyMemory(stored, Irp->AssociatedIrp.SystemBuffer, length);
    stored_length = length;
    return CompleteRequest(Irp, STATUS_SUCCESS, length);
}

static NTSTATUS NTAPI Read(PDEVICE_OBJECT DeviceObject, PIRP Irp)
{
    ULONG length = IoGetCurrentIrpStackLocation(Irp)->Parameters.Read.Length;
    ULONG n = length < stored_length ? length : stored_length;

    (void)DeviceObject;
    RtlCopyMemory(Irp->AssociatedIrp.SystemBuffer, stored, n);
    return CompleteRequest(Irp, STATUS_SUCCESS, n);
}

NTSTATUS NTAPI DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    PDEVICE_OBJECT device;
    NTSTATUS status = CreateNamedDevice(DriverObject, (PCWSTR)u"\\Device\\Echo", DO_BUFFERED_IO, &device);

    (void)RegistryPath;
    if (!NT_SUCCESS(status))
        return status;
    DriverObject->MajorFunction[IRP_MJ_CREATE] = Create;
    DriverObject->MajorFunction[IRP_MJ_CLOSE] = Close;
    DriverObject->MajorFunction[IRP_MJ_WRITE] = Write;
    DriverObject->MajorFunction[IRP_MJ_READ] = Read;
    return STATUS_SUCCESS;
}
