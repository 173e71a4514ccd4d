/*
 * neither.sys: a device (\Device\Neither) whose reads use neither I/O. The
 * IRP_MJ_READ dispatch routine copies a message into the caller's raw user address: right only because this runs in the caller's context, and completes the request
 * at once. Read it with: emu run --driver neither.sys devread '\Device\Neither'
 */
#include <ddk/ntddk.h>

static const char message[] = "data from neither.sys";

static NTSTATUS NTAPI Read(PDEVICE_OBJECT DeviceObject, PIRP Irp)
{
    PIO_STACK_LOCATION stack = IoGetCurrentIrpStackLocation(Irp);
    ULONG length = stack->Parameters.Read.Length;
    ULONG n = length < sizeof(message) ? length : sizeof(message);
    char *target = Irp->UserBuffer;

    (void)DeviceObject;
    DbgPrint("neither.sys: read of %u bytes in process %llu, writing at %p\n", length,
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
    RtlInitUnicodeString(&name, (PCWSTR)u"\\Device\\Neither");
    status = IoCreateDevice(DriverObject, 0, &name, FILE_DEVICE_UNKNOWN, 0, 0, &device);
    if (!NT_SUCCESS(status))
        return status;
    /* neither DO_BUFFERED_IO nor DO_DIRECT_IO: neither I/O */
    DriverObject->MajorFunction[IRP_MJ_READ] = Read;
    return STATUS_SUCCESS;
}
