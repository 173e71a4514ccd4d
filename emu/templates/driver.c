/*
 * @NAME@.sys: a WDM driver to start from. It compiles unchanged with the WDK for Windows
 * and with `emu build-driver @NAME@.c` here (see docs/drivers.md, "Your own driver").
 *
 * DriverEntry creates \Device\@NAME@ and the link \DosDevices\@NAME@ (\??\@NAME@ to an
 * app), and sets the dispatch routines. Any request without one (IRP_MJ_READ, say) fails
 * with STATUS_INVALID_DEVICE_REQUEST: the I/O manager's default routine. One control code,
 * IOCTL_@NAME@_UPPER (METHOD_BUFFERED), returns its input with a-z made A-Z:
 *
 *     emu run --driver @NAME@.sys EMU/guest/build/apps/devioctl '\??\@NAME@' 0x222000 hello
 *
 * (EMU: the emu repository) prints `status 0x00000000`, `returned 6 bytes`,
 * `output: HELLO\x00`.
 */
#include <ntddk.h>

#define IOCTL_@NAME@_UPPER CTL_CODE(FILE_DEVICE_UNKNOWN, 0x800, METHOD_BUFFERED, FILE_ANY_ACCESS)

static NTSTATUS Complete(PIRP Irp, NTSTATUS Status, ULONG_PTR Information)
{
    Irp->IoStatus.Status = Status;
    Irp->IoStatus.Information = Information;
    IoCompleteRequest(Irp, IO_NO_INCREMENT);
    return Status;
}

/* IRP_MJ_CREATE (an app opens the device) and IRP_MJ_CLOSE (its last handle goes). */
static NTSTATUS CreateClose(PDEVICE_OBJECT DeviceObject, PIRP Irp)
{
    UNREFERENCED_PARAMETER(DeviceObject);
    return Complete(Irp, STATUS_SUCCESS, 0);
}

/* METHOD_BUFFERED: the input is in Irp->AssociatedIrp.SystemBuffer, and the output goes
 * there too; the I/O manager copies Information bytes of it back to the caller. */
static NTSTATUS DeviceControl(PDEVICE_OBJECT DeviceObject, PIRP Irp)
{
    PIO_STACK_LOCATION stack = IoGetCurrentIrpStackLocation(Irp);
    ULONG in = stack->Parameters.DeviceIoControl.InputBufferLength;
    ULONG out = stack->Parameters.DeviceIoControl.OutputBufferLength;
    PUCHAR buffer = Irp->AssociatedIrp.SystemBuffer;
    ULONG i;

    UNREFERENCED_PARAMETER(DeviceObject);
    if (stack->Parameters.DeviceIoControl.IoControlCode != IOCTL_@NAME@_UPPER)
        return Complete(Irp, STATUS_INVALID_DEVICE_REQUEST, 0);
    if (out < in)
        return Complete(Irp, STATUS_BUFFER_TOO_SMALL, 0);
    for (i = 0; i < in; i++)
        if (buffer[i] >= 'a' && buffer[i] <= 'z')
            buffer[i] -= 'a' - 'A';
    return Complete(Irp, STATUS_SUCCESS, in);
}

static VOID DriverUnload(PDRIVER_OBJECT DriverObject)
{
    UNICODE_STRING link;

    RtlInitUnicodeString(&link, L"\\DosDevices\\@NAME@");
    IoDeleteSymbolicLink(&link);
    IoDeleteDevice(DriverObject->DeviceObject);
    DbgPrint("@NAME@.sys: unloaded\n");
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNICODE_STRING name, link;
    PDEVICE_OBJECT device;
    NTSTATUS status;

    UNREFERENCED_PARAMETER(RegistryPath);
    RtlInitUnicodeString(&name, L"\\Device\\@NAME@");
    status = IoCreateDevice(DriverObject, 0, &name, FILE_DEVICE_UNKNOWN, 0, FALSE, &device);
    if (!NT_SUCCESS(status))
        return status;
    RtlInitUnicodeString(&link, L"\\DosDevices\\@NAME@");
    status = IoCreateSymbolicLink(&link, &name);
    if (!NT_SUCCESS(status)) {
        IoDeleteDevice(device);
        return status;
    }
    device->Flags |= DO_BUFFERED_IO;
    device->Flags &= ~DO_DEVICE_INITIALIZING;
    DriverObject->MajorFunction[IRP_MJ_CREATE] = CreateClose;
    DriverObject->MajorFunction[IRP_MJ_CLOSE] = CreateClose;
    DriverObject->MajorFunction[IRP_MJ_DEVICE_CONTROL] = DeviceControl;
    DriverObject->DriverUnload = DriverUnload;
    DbgPrint("@NAME@.sys: loaded, \\Device\\@NAME@ and \\??\\@NAME@\n");
    return STATUS_SUCCESS;
}
