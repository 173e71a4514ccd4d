/*
 * peirqlpage.sys: a pageable user page read at DISPATCH_LEVEL, where the IRQL was raised the
 * way wdm.h does it on x64 (KeRaiseIrql: a `mov cr8`). It includes only the WDK's
 * <ntddk.h> and builds, unchanged, into a PE32+ image.
 *
 * DriverEntry creates \Device\PagedPool (neither buffered nor direct I/O), the device the
 * `pagedrv` app talks to. IRP_MJ_DEVICE_CONTROL with METHOD_NEITHER sums the bytes of the
 * caller's input buffer, read through its raw user address (Type3InputBuffer), and stores
 * the 8-byte sum at Irp->UserBuffer:
 *   0x802 (CTL_CODE 0x22200B): at DISPATCH_LEVEL. A page of the buffer that is not present
 *         (pagedrv pushed it out to the pagefile) cannot be paged in there: bug check 0xD1
 *         DRIVER_IRQL_NOT_LESS_OR_EQUAL (the address, IRQL 2, 0 = read, the RIP of the read).
 *   0x803 (0x22200F): at PASSIVE_LEVEL, where the page fault is serviced.
 *
 *   emu run --driver peirqlpage.sys pagedrv user-dispatch
 */
#include <ntddk.h>

#define IOCTL_USER_SUM_DISPATCH CTL_CODE(FILE_DEVICE_UNKNOWN, 0x802, METHOD_NEITHER, 0)
#define IOCTL_USER_SUM_PASSIVE  CTL_CODE(FILE_DEVICE_UNKNOWN, 0x803, METHOD_NEITHER, 0)

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

static ULONG64 Sum(const volatile UCHAR *bytes, ULONG length)
{
    ULONG64 sum = 0;

    for (ULONG i = 0; i < length; i++)
        sum += bytes[i];
    return sum;
}

static NTSTATUS DeviceControl(PDEVICE_OBJECT DeviceObject, PIRP Irp)
{
    PIO_STACK_LOCATION stack = IoGetCurrentIrpStackLocation(Irp);
    const UCHAR *user = stack->Parameters.DeviceIoControl.Type3InputBuffer;
    ULONG length = stack->Parameters.DeviceIoControl.InputBufferLength;
    ULONG64 sum;
    KIRQL old;

    UNREFERENCED_PARAMETER(DeviceObject);
    if (stack->Parameters.DeviceIoControl.OutputBufferLength < sizeof(sum))
        return Complete(Irp, STATUS_BUFFER_TOO_SMALL, 0);
    switch (stack->Parameters.DeviceIoControl.IoControlCode) {
    case IOCTL_USER_SUM_DISPATCH:           /* the bug: a pageable page at DISPATCH_LEVEL */
        KeRaiseIrql(DISPATCH_LEVEL, &old);
        sum = Sum(user, length);
        KeLowerIrql(old);
        break;
    case IOCTL_USER_SUM_PASSIVE:
        sum = Sum(user, length);
        break;
    default:
        return Complete(Irp, STATUS_INVALID_DEVICE_REQUEST, 0);
    }
    *(volatile ULONG64 *)Irp->UserBuffer = sum;     /* the caller's context: its address */
    return Complete(Irp, STATUS_SUCCESS, sizeof(sum));
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNICODE_STRING name;
    PDEVICE_OBJECT device;
    NTSTATUS status;

    UNREFERENCED_PARAMETER(RegistryPath);
    RtlInitUnicodeString(&name, L"\\Device\\PagedPool");
    status = IoCreateDevice(DriverObject, 0, &name, FILE_DEVICE_UNKNOWN, 0, FALSE, &device);
    if (!NT_SUCCESS(status))
        return status;
    DriverObject->MajorFunction[IRP_MJ_CREATE] = CreateClose;
    DriverObject->MajorFunction[IRP_MJ_CLOSE] = CreateClose;
    DriverObject->MajorFunction[IRP_MJ_DEVICE_CONTROL] = DeviceControl;
    return STATUS_SUCCESS;
}
