/*
 * ioctl.sys: \Device\Ioctl answers one I/O control request, "reverse this text",
 * in each transfer method: METHOD_BUFFERED (input and output share the system
 * buffer), METHOD_OUT_DIRECT (input buffered, output through an MDL), and
 * METHOD_NEITHER (the caller's raw addresses: probed, and copied inside __try, as
 * Microsoft's sioctl sample does; a bad address completes the request with the
 * exception's code).
 */
#include <ntddk.h>

#define IOCTL_REVERSE_BUFFERED CTL_CODE(FILE_DEVICE_UNKNOWN, 0x800, METHOD_BUFFERED, FILE_ANY_ACCESS)
#define IOCTL_REVERSE_DIRECT   CTL_CODE(FILE_DEVICE_UNKNOWN, 0x801, METHOD_OUT_DIRECT, FILE_ANY_ACCESS)
#define IOCTL_REVERSE_NEITHER  CTL_CODE(FILE_DEVICE_UNKNOWN, 0x802, METHOD_NEITHER, FILE_ANY_ACCESS)

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

static void reverse(char *out, const char *in, ULONG n)
{
    for (ULONG i = 0; i < n; i++)
        out[i] = in[n - 1 - i];
}

static NTSTATUS Complete(PIRP Irp, NTSTATUS Status, ULONG_PTR Information)
{
    Irp->IoStatus.Status = Status;
    Irp->IoStatus.Information = Information;
    IoCompleteRequest(Irp, IO_NO_INCREMENT);
    return Status;
}

static NTSTATUS DeviceControl(PDEVICE_OBJECT DeviceObject, PIRP Irp)
{
    PIO_STACK_LOCATION stack = IoGetCurrentIrpStackLocation(Irp);
    ULONG in = stack->Parameters.DeviceIoControl.InputBufferLength;
    ULONG out = stack->Parameters.DeviceIoControl.OutputBufferLength;
    ULONG n = in < out ? in : out;
    char work[64];

    UNREFERENCED_PARAMETER(DeviceObject);
    if (n > sizeof(work))
        n = sizeof(work);
    switch (stack->Parameters.DeviceIoControl.IoControlCode) {
    case IOCTL_REVERSE_BUFFERED:                   /* in and out: the same system buffer */
        RtlCopyMemory(work, Irp->AssociatedIrp.SystemBuffer, n);
        reverse(Irp->AssociatedIrp.SystemBuffer, work, n);
        return Complete(Irp, STATUS_SUCCESS, n);
    case IOCTL_REVERSE_DIRECT: {                   /* out: the caller's frames */
        char *target = MmGetSystemAddressForMdlSafe(Irp->MdlAddress, NormalPagePriority);

        if (target == NULL)
            return Complete(Irp, STATUS_INSUFFICIENT_RESOURCES, 0);
        reverse(target, Irp->AssociatedIrp.SystemBuffer, n);
        return Complete(Irp, STATUS_SUCCESS, n);
    }
    case IOCTL_REVERSE_NEITHER: {                  /* raw user addresses: trust nothing */
        char result[64];
        NTSTATUS status = STATUS_SUCCESS;

        /* The __try covers the calls made in it (clang's SEH here is synchronous): the
           probes and the copies (RtlCopyMemory is memcpy, an import). */
        __try {
            ProbeForRead(stack->Parameters.DeviceIoControl.Type3InputBuffer, n, 1);
            RtlCopyMemory(work, stack->Parameters.DeviceIoControl.Type3InputBuffer, n);
            reverse(result, work, n);
            ProbeForWrite(Irp->UserBuffer, n, 1);
            RtlCopyMemory(Irp->UserBuffer, result, n);
        } __except (EXCEPTION_EXECUTE_HANDLER) {
            status = GetExceptionCode();
        }
        return Complete(Irp, status, NT_SUCCESS(status) ? n : 0);
    }
    default:
        return Complete(Irp, STATUS_INVALID_DEVICE_REQUEST, 0);
    }
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNICODE_STRING name;
    PDEVICE_OBJECT device;
    NTSTATUS status;

    UNREFERENCED_PARAMETER(RegistryPath);
    RtlInitUnicodeString(&name, L"\\Device\\Ioctl");
    status = IoCreateDevice(DriverObject, 0, &name, FILE_DEVICE_UNKNOWN, 0, FALSE, &device);
    if (!NT_SUCCESS(status))
        return status;
    DriverObject->MajorFunction[IRP_MJ_CREATE] = CreateClose;
    DriverObject->MajorFunction[IRP_MJ_CLOSE] = CreateClose;
    DriverObject->MajorFunction[IRP_MJ_DEVICE_CONTROL] = DeviceControl;
    return STATUS_SUCCESS;
}
