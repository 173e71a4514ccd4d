/*
 * peread.sys: a device with buffered I/O, written as for Windows. It includes only the
 * WDK's <ntddk.h> and builds, unchanged, into a PE32+ image Windows would load too.
 *
 * DriverEntry creates \Device\PeRead (DO_BUFFERED_IO) and the symbolic link
 * \DosDevices\PeRead (which an app opens as \??\PeRead), and fills in the dispatch table:
 * IRP_MJ_CREATE and IRP_MJ_CLOSE succeed, IRP_MJ_READ copies "data from peread.sys" (at
 * most the requested length, IoGetCurrentIrpStackLocation(Irp)->Parameters.Read.Length)
 * into the IRP's system buffer; the I/O manager copies it to the caller. DriverUnload
 * deletes the link and the device.
 *
 *   emu run --driver peread.sys devread '\??\PeRead'   ->   data: data from peread.sys
 */
#include <ntddk.h>

static const char message[] = "data from peread.sys";

static NTSTATUS Complete(PIRP Irp, NTSTATUS Status, ULONG_PTR Information)
{
    Irp->IoStatus.Status = Status;
    Irp->IoStatus.Information = Information;
    IoCompleteRequest(Irp, IO_NO_INCREMENT);
    return Status;
}

static NTSTATUS CreateClose(PDEVICE_OBJECT DeviceObject, PIRP Irp)
{
    UNREFERENCED_PARAMETER(DeviceObject);
    return Complete(Irp, STATUS_SUCCESS, 0);
}

static NTSTATUS Read(PDEVICE_OBJECT DeviceObject, PIRP Irp)
{
    PIO_STACK_LOCATION stack = IoGetCurrentIrpStackLocation(Irp);
    /* volatile: a plain loop could become a call to memcpy, an import not bound here */
    volatile char *out = Irp->AssociatedIrp.SystemBuffer;
    ULONG n = stack->Parameters.Read.Length;

    UNREFERENCED_PARAMETER(DeviceObject);
    if (n > sizeof(message) - 1)
        n = sizeof(message) - 1;
    for (ULONG i = 0; i < n; i++)
        out[i] = message[i];
    return Complete(Irp, STATUS_SUCCESS, n);
}

static VOID Unload(PDRIVER_OBJECT DriverObject)
{
    UNICODE_STRING link;

    RtlInitUnicodeString(&link, L"\\DosDevices\\PeRead");
    IoDeleteSymbolicLink(&link);
    IoDeleteDevice(DriverObject->DeviceObject);
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNICODE_STRING name, link;
    PDEVICE_OBJECT device;
    NTSTATUS status;

    UNREFERENCED_PARAMETER(RegistryPath);
    RtlInitUnicodeString(&name, L"\\Device\\PeRead");
    status = IoCreateDevice(DriverObject, 0, &name, FILE_DEVICE_UNKNOWN, 0, FALSE, &device);
    if (!NT_SUCCESS(status))
        return status;
    device->Flags |= DO_BUFFERED_IO;
    device->Flags &= ~DO_DEVICE_INITIALIZING;
    RtlInitUnicodeString(&link, L"\\DosDevices\\PeRead");
    status = IoCreateSymbolicLink(&link, &name);
    if (!NT_SUCCESS(status)) {
        IoDeleteDevice(device);
        return status;
    }
    DriverObject->MajorFunction[IRP_MJ_CREATE] = CreateClose;
    DriverObject->MajorFunction[IRP_MJ_CLOSE] = CreateClose;
    DriverObject->MajorFunction[IRP_MJ_READ] = Read;
    DriverObject->DriverUnload = Unload;
    DbgPrint("peread.sys: \\Device\\PeRead (buffered I/O), link \\DosDevices\\PeRead\n");
    return STATUS_SUCCESS;
}
