/*
 * ioctl.sys: \Device\Ioctl answers one I/O control request, "reverse this text",
 * in each transfer method: METHOD_BUFFERED (input and output share the system
 * buffer), METHOD_OUT_DIRECT (input buffered, output through an MDL), and
 * METHOD_NEITHER (the caller's raw addresses: probed and copied with guards).
 */
#include "device.h"

#define IOCTL_REVERSE_BUFFERED CTL_CODE(FILE_DEVICE_UNKNOWN, 0x800, METHOD_BUFFERED, 0)
#define IOCTL_REVERSE_DIRECT   CTL_CODE(FILE_DEVICE_UNKNOWN, 0x801, METHOD_OUT_DIRECT, 0)
#define IOCTL_REVERSE_NEITHER  CTL_CODE(FILE_DEVICE_UNKNOWN, 0x802, METHOD_NEITHER, 0)
#define STATUS_INVALID_DEVICE_REQUEST ((NTSTATUS)0xC0000010L)

static void reverse(char *out, const char *in, ULONG n)
{
    for (ULONG i = 0; i < n; i++)
        out[i] = in[n - 1 - i];
}

static NTSTATUS NTAPI DeviceControl(PDEVICE_OBJECT DeviceObject, PIRP Irp)
{
    PIO_STACK_LOCATION stack = IoGetCurrentIrpStackLocation(Irp);
    ULONG in = stack->Parameters.DeviceIoControl.InputBufferLength;
    ULONG out = stack->Parameters.DeviceIoControl.OutputBufferLength;
    ULONG n = in < out ? in : out;
    char work[64];

    (void)DeviceObject;
    if (n > sizeof(work))
        n = sizeof(work);
    switch (stack->Parameters.DeviceIoControl.IoControlCode) {
    case IOCTL_REVERSE_BUFFERED:                   /* in and out: the same system buffer */
        RtlCopyMemory(work, Irp->AssociatedIrp.SystemBuffer, n);
        reverse(Irp->AssociatedIrp.SystemBuffer, work, n);
        return CompleteRequest(Irp, STATUS_SUCCESS, n);
    case IOCTL_REVERSE_DIRECT:                     /* out: the caller's frames */
        reverse(MmGetSystemAddressForMdlSafe(Irp->MdlAddress, 0),
                Irp->AssociatedIrp.SystemBuffer, n);
        return CompleteRequest(Irp, STATUS_SUCCESS, n);
    case IOCTL_REVERSE_NEITHER: {                  /* raw user addresses: trust nothing */
        char result[64];
        NTSTATUS status = MmCopyFromUser(work, stack->Parameters.DeviceIoControl.Type3InputBuffer,
                                         n);
        if (NT_SUCCESS(status)) {
            reverse(result, work, n);
            status = MmCopyToUser(Irp->UserBuffer, result, n);
        }
        return CompleteRequest(Irp, status, NT_SUCCESS(status) ? n : 0);
    }
    default:
        return CompleteRequest(Irp, STATUS_INVALID_DEVICE_REQUEST, 0);
    }
}

NTSTATUS NTAPI DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    PDEVICE_OBJECT device;
    NTSTATUS status = CreateNamedDevice(DriverObject, (PCWSTR)u"\\Device\\Ioctl", 0, &device);

    (void)RegistryPath;
    if (NT_SUCCESS(status))
        DriverObject->MajorFunction[IRP_MJ_DEVICE_CONTROL] = DeviceControl;
    return status;
}
