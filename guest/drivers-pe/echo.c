/*
 * echo.sys: \Device\Echo keeps what you write and gives it back when you read
 * (buffered I/O both ways). Its IRP_MJ_CREATE and IRP_MJ_CLOSE routines say who opened
 * and closed it.
 */
#include <ntddk.h>

static char stored[64];
static ULONG stored_length;

/* Irp->IoStatus = (Status, Information), then IoCompleteRequest; returns Status. */
static NTSTATUS CompleteRequest(PIRP Irp, NTSTATUS Status, ULONG_PTR Information)
{
    Irp->IoStatus.Status = Status;
    Irp->IoStatus.Information = Information;
    IoCompleteRequest(Irp, IO_NO_INCREMENT);
    return Status;
}

static NTSTATUS Create(PDEVICE_OBJECT DeviceObject, PIRP Irp)
{
    UNREFERENCED_PARAMETER(DeviceObject);
    DbgPrint("echo.sys: opened by process %llu\n",
             (unsigned long long)(ULONG_PTR)PsGetCurrentProcessId());
    return CompleteRequest(Irp, STATUS_SUCCESS, 0);
}

static NTSTATUS Close(PDEVICE_OBJECT DeviceObject, PIRP Irp)
{
    UNREFERENCED_PARAMETER(DeviceObject);
    DbgPrint("echo.sys: closed by process %llu\n",
             (unsigned long long)(ULONG_PTR)PsGetCurrentProcessId());
    return CompleteRequest(Irp, STATUS_SUCCESS, 0);
}

static NTSTATUS Write(PDEVICE_OBJECT DeviceObject, PIRP Irp)
{
    ULONG length = IoGetCurrentIrpStackLocation(Irp)->Parameters.Write.Length;

    UNREFERENCED_PARAMETER(DeviceObject);
    if (length > sizeof(stored))
        length = sizeof(stored);
    RtlCopyMemory(stored, Irp->AssociatedIrp.SystemBuffer, length);
    stored_length = length;
    return CompleteRequest(Irp, STATUS_SUCCESS, length);
}

static NTSTATUS Read(PDEVICE_OBJECT DeviceObject, PIRP Irp)
{
    ULONG length = IoGetCurrentIrpStackLocation(Irp)->Parameters.Read.Length;
    ULONG n = length < stored_length ? length : stored_length;

    UNREFERENCED_PARAMETER(DeviceObject);
    RtlCopyMemory(Irp->AssociatedIrp.SystemBuffer, stored, n);
    return CompleteRequest(Irp, STATUS_SUCCESS, n);
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNICODE_STRING name;
    PDEVICE_OBJECT device;
    NTSTATUS status;

    UNREFERENCED_PARAMETER(RegistryPath);
    RtlInitUnicodeString(&name, L"\\Device\\Echo");
    status = IoCreateDevice(DriverObject, 0, &name, FILE_DEVICE_UNKNOWN, 0, FALSE, &device);
    if (!NT_SUCCESS(status))
        return status;
    device->Flags |= DO_BUFFERED_IO;
    DriverObject->MajorFunction[IRP_MJ_CREATE] = Create;
    DriverObject->MajorFunction[IRP_MJ_CLOSE] = Close;
    DriverObject->MajorFunction[IRP_MJ_WRITE] = Write;
    DriverObject->MajorFunction[IRP_MJ_READ] = Read;
    return STATUS_SUCCESS;
}
