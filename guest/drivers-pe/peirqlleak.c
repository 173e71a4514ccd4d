/*
 * peirqlleak.sys: a dispatch routine that raises the IRQL (KeRaiseIrql: a `mov cr8`) and
 * forgets to lower it. Its system call then returns to user mode above PASSIVE_LEVEL: bug
 * check 0x4A IRQL_GT_ZERO_AT_SYSTEM_SERVICE. It includes only the WDK's <ntddk.h>.
 *
 * DriverEntry creates \Device\PeIrqlLeak and the link \DosDevices\PeIrqlLeak; IRP_MJ_CREATE
 * and IRP_MJ_CLOSE succeed; IRP_MJ_READ completes with no data at DISPATCH_LEVEL.
 *
 *   emu run --driver peirqlleak.sys devread '\??\PeIrqlLeak'
 */
#include <ntddk.h>

static NTSTATUS Complete(PIRP Irp, NTSTATUS Status)
{
    Irp->IoStatus.Status = Status;
    Irp->IoStatus.Information = 0;
    IoCompleteRequest(Irp, IO_NO_INCREMENT);
    return Status;
}

static NTSTATUS CreateClose(PDEVICE_OBJECT DeviceObject, PIRP Irp)
{
    UNREFERENCED_PARAMETER(DeviceObject);
    return Complete(Irp, STATUS_SUCCESS);
}

static NTSTATUS Read(PDEVICE_OBJECT DeviceObject, PIRP Irp)
{
    KIRQL old;

    UNREFERENCED_PARAMETER(DeviceObject);
    KeRaiseIrql(DISPATCH_LEVEL, &old);
    DbgPrint("peirqlleak.sys: read at IRQL %u, returning without KeLowerIrql(%u)\n",
             KeGetCurrentIrql(), old);
    return Complete(Irp, STATUS_SUCCESS);
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNICODE_STRING name, link;
    PDEVICE_OBJECT device;
    NTSTATUS status;

    UNREFERENCED_PARAMETER(RegistryPath);
    RtlInitUnicodeString(&name, L"\\Device\\PeIrqlLeak");
    status = IoCreateDevice(DriverObject, 0, &name, FILE_DEVICE_UNKNOWN, 0, FALSE, &device);
    if (!NT_SUCCESS(status))
        return status;
    RtlInitUnicodeString(&link, L"\\DosDevices\\PeIrqlLeak");
    status = IoCreateSymbolicLink(&link, &name);
    if (!NT_SUCCESS(status)) {
        IoDeleteDevice(device);
        return status;
    }
    DriverObject->MajorFunction[IRP_MJ_CREATE] = CreateClose;
    DriverObject->MajorFunction[IRP_MJ_CLOSE] = CreateClose;
    DriverObject->MajorFunction[IRP_MJ_READ] = Read;
    return STATUS_SUCCESS;
}
