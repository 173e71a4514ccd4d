/*
 * buffered.sys: a device (\Device\Buffered) whose reads use buffered I/O. The
 * IRP_MJ_READ dispatch routine copies a message into the system buffer in kernel pool; the I/O manager copies it to the caller, and completes the request
 * at once. Read it with: emu run --driver buffered.sys devread '\Device\Buffered'
 */
#include <ddk/ntddk.h>

static const char message[] = "data from buffered.sys";

static NTSTATUS NTAPI Read(PDEVICE_OBJECT DeviceObject, PIRP Irp)
{
    PIO_STACK_LOCATION stack = IoGetCurrentIrpStackLocation(Irp);
    ULONG length = stack->Parameters.Read.Length;
    ULONG n = length < sizeof(message) ? length : sizeof(message);
    char *target = Irp->AssociatedIrp.SystemBuffer;

    (void)DeviceObject;
    DbgPrint("buffered.sys: read of %u bytes in process %llu, writing at %p\n", length,
             (unsigned long long)(ULONG_PTR)PsGetCurrentProcessId(), target);
    RtlCopyMemory(target, message, n);
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
    RtlInitUnicodeString(&name, (PCWSTR)u"\\Device\\Buffered");
    status = IoCreateDevice(DriverObject, 0, &name, FILE_DEVICE_UNKNOWN, 0, 0, &device);
    if (!NT_SUCCESS(status))
        return status;
    device->Flags |= DO_BUFFERED_IO;
    DriverObject->MajorFunction[IRP_MJ_READ] = Read;
    return STATUS_SUCCESS;
}
