/*
 * stale.sys: keeps a user pointer past the request that passed it (\Device\Stale).
 *
 * Two METHOD_NEITHER I/O control requests: KEEP (0x222003) remembers the caller's input
 * buffer address (Parameters.DeviceIoControl.Type3InputBuffer, the raw user address);
 * STAMP (0x222007) writes a stamp through the pointer it kept, with no probe and no
 * __try. A user address is valid only while the caller's buffer is: if the app freed
 * it between the two requests, the stamp is a use after free, a kernel-mode write to an
 * address with no page behind it (bug check 0x50 PAGE_FAULT_IN_NONPAGED_AREA), or, had
 * the page been allocated again, a write into whatever lives there now.
 */
#include <ntddk.h>

#define IOCTL_STALE_KEEP  CTL_CODE(FILE_DEVICE_UNKNOWN, 0x800, METHOD_NEITHER, FILE_ANY_ACCESS)
#define IOCTL_STALE_STAMP CTL_CODE(FILE_DEVICE_UNKNOWN, 0x801, METHOD_NEITHER, FILE_ANY_ACCESS)
#define STAMP 0x57A1E

static PVOID kept;                      /* the caller's buffer, kept (the bug) */

/* IRP_MJ_CREATE and IRP_MJ_CLOSE: open and close succeed (a driver without these routines
   cannot be opened: Windows' default MajorFunction entry, IopInvalidDeviceRequest, fails
   the request with STATUS_INVALID_DEVICE_REQUEST). */
static NTSTATUS CreateClose(PDEVICE_OBJECT DeviceObject, PIRP Irp)
{
    UNREFERENCED_PARAMETER(DeviceObject);
    Irp->IoStatus.Status = STATUS_SUCCESS;
    Irp->IoStatus.Information = 0;
    IoCompleteRequest(Irp, IO_NO_INCREMENT);
    return STATUS_SUCCESS;
}

static NTSTATUS DeviceControl(PDEVICE_OBJECT DeviceObject, PIRP Irp)
{
    PIO_STACK_LOCATION stack = IoGetCurrentIrpStackLocation(Irp);
    NTSTATUS status = STATUS_SUCCESS;

    UNREFERENCED_PARAMETER(DeviceObject);
    switch (stack->Parameters.DeviceIoControl.IoControlCode) {
    case IOCTL_STALE_KEEP:
        kept = stack->Parameters.DeviceIoControl.Type3InputBuffer;
        DbgPrint("stale.sys: keeping %p\n", kept);
        break;
    case IOCTL_STALE_STAMP:
        DbgPrint("stale.sys: stamping %p\n", kept);
        *(volatile ULONG *)kept = STAMP;          /* the bug: is the buffer still there? */
        break;
    default:
        status = STATUS_INVALID_DEVICE_REQUEST;
        break;
    }
    Irp->IoStatus.Status = status;
    Irp->IoStatus.Information = 0;
    IoCompleteRequest(Irp, IO_NO_INCREMENT);
    return status;
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNICODE_STRING name;
    PDEVICE_OBJECT device;
    NTSTATUS status;

    UNREFERENCED_PARAMETER(RegistryPath);
    RtlInitUnicodeString(&name, L"\\Device\\Stale");
    status = IoCreateDevice(DriverObject, 0, &name, FILE_DEVICE_UNKNOWN, 0, FALSE, &device);
    if (!NT_SUCCESS(status))
        return status;
    /* Flags: neither DO_BUFFERED_IO nor DO_DIRECT_IO; the control codes say METHOD_NEITHER. */
    DriverObject->MajorFunction[IRP_MJ_CREATE] = CreateClose;
    DriverObject->MajorFunction[IRP_MJ_CLOSE] = CreateClose;
    DriverObject->MajorFunction[IRP_MJ_DEVICE_CONTROL] = DeviceControl;
    return STATUS_SUCCESS;
}
