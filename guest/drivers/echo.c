/*
 * echo.sys: \Device\Echo keeps what you write and gives it back when you read
 * (buffered I/O both ways). Its IRP_MJ_CREATE routine says who opened it.
 */
#include <ddk/ntddk.h>

static char stored[64];
static ULONG stored_length;

static NTSTATUS complete(PIRP Irp, NTSTATUS status, ULONG_PTR information)
{
    Irp->IoStatus.Status = status;
    Irp->IoStatus.Information = information;
    IoCompleteRequest(Irp, IO_NO_INCREMENT);
    return status;
}

static NTSTATUS NTAPI Create(PDEVICE_OBJECT DeviceObject, PIRP Irp)
{
    (void)DeviceObject;
    DbgPrint("echo.sys: opened by process %llu\n",
             (unsigned long long)(ULONG_PTR)PsGetCurrentProcessId());
    return complete(Irp, STATUS_SUCCESS, 0);
}

static NTSTATUS NTAPI Write(PDEVICE_OBJECT DeviceObject, PIRP Irp)
{
    ULONG length = IoGetCurrentIrpStackLocation(Irp)->Parameters.Write.Length;

    (void)DeviceObject;
    if (length > sizeof(stored))
        length = sizeof(stored);
    RtlCopyMemory(stored, Irp->AssociatedIrp.SystemBuffer, length);
    stored_length = length;
    return complete(Irp, STATUS_SUCCESS, length);
}

static NTSTATUS NTAPI Read(PDEVICE_OBJECT DeviceObject, PIRP Irp)
{
    ULONG length = IoGetCurrentIrpStackLocation(Irp)->Parameters.Read.Length;
    ULONG n = length < stored_length ? length : stored_length;

    (void)DeviceObject;
    RtlCopyMemory(Irp->AssociatedIrp.SystemBuffer, stored, n);
    return complete(Irp, STATUS_SUCCESS, n);
}

NTSTATUS NTAPI DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNICODE_STRING name;
    PDEVICE_OBJECT device;
    NTSTATUS status;

    (void)RegistryPath;
    RtlInitUnicodeString(&name, (PCWSTR)u"\\Device\\Echo");
    status = IoCreateDevice(DriverObject, 0, &name, FILE_DEVICE_UNKNOWN, 0, 0, &device);
    if (!NT_SUCCESS(status))
        return status;
    device->Flags |= DO_BUFFERED_IO;
    DriverObject->MajorFunction[IRP_MJ_CREATE] = Create;
    DriverObject->MajorFunction[IRP_MJ_WRITE] = Write;
    DriverObject->MajorFunction[IRP_MJ_READ] = Read;
    return STATUS_SUCCESS;
}
