/*
 * pagedpool.sys: pageable memory may only be touched at IRQL < DISPATCH_LEVEL.
 *
 * DriverEntry takes 3 pages (12288 bytes) of PagedPool and fills them, byte i =
 * (i * 7 + 3) & 0xFF (so the byte sum is 48 * 32640 = 1566720). \Device\PagedPool
 * then answers four I/O control requests, all METHOD_NEITHER; each returns an
 * 8-byte sum of bytes, copied to the caller's output buffer (Irp->UserBuffer,
 * at least 8 bytes, else STATUS_BUFFER_TOO_SMALL) at PASSIVE_LEVEL, probed and
 * copied inside __try/__except (a bad buffer completes the request with the
 * exception's code):
 *
 *   IOCTL_PAGED_SUM_PASSIVE  (0x800): sums the pool buffer at PASSIVE_LEVEL. If its
 *       pages were pushed out to the pagefile, touching them page-faults and the
 *       memory manager reads them back in: fine.
 *   IOCTL_PAGED_SUM_DISPATCH (0x801): the same sum after KfRaiseIrql(DISPATCH_LEVEL).
 *       While the pages are resident nothing shows; once they are in the pagefile
 *       the first touch is a page fault at DISPATCH_LEVEL, which the memory manager
 *       may not service (it would have to wait for the disk): bug check 0xD1
 *       DRIVER_IRQL_NOT_LESS_OR_EQUAL. The driver does nothing to avoid it; that
 *       is the lesson.
 *   IOCTL_USER_SUM_DISPATCH  (0x802): sums the caller's input buffer (the raw user
 *       address METHOD_NEITHER passes as Type3InputBuffer, InputBufferLength
 *       bytes) at DISPATCH_LEVEL, dereferencing it directly, no probe: a
 *       deliberate driver bug. User memory is pageable too: 0xD1 if that page
 *       is in the pagefile.
 *   IOCTL_USER_SUM_PASSIVE   (0x803): the same direct read at PASSIVE_LEVEL, in the
 *       requesting process's context: a paged-out page is simply paged back in.
 *
 * Also prints `pagedpool.sys: 12288 bytes of PagedPool at <address>` at load.
 */
#include <ntddk.h>

#define PAGED_BYTES 12288
#define PAGED_TAG   0x50646750          /* 'PgdP', stored little-endian */

#define IOCTL_PAGED_SUM_PASSIVE  CTL_CODE(FILE_DEVICE_UNKNOWN, 0x800, METHOD_NEITHER, 0)
#define IOCTL_PAGED_SUM_DISPATCH CTL_CODE(FILE_DEVICE_UNKNOWN, 0x801, METHOD_NEITHER, 0)
#define IOCTL_USER_SUM_DISPATCH  CTL_CODE(FILE_DEVICE_UNKNOWN, 0x802, METHOD_NEITHER, 0)
#define IOCTL_USER_SUM_PASSIVE   CTL_CODE(FILE_DEVICE_UNKNOWN, 0x803, METHOD_NEITHER, 0)

static UCHAR *paged;                    /* PAGED_BYTES of PagedPool */

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

static NTSTATUS CompleteRequest(PIRP Irp, NTSTATUS Status, ULONG_PTR Information)
{
    Irp->IoStatus.Status = Status;
    Irp->IoStatus.Information = Information;
    IoCompleteRequest(Irp, IO_NO_INCREMENT);
    return Status;
}

/* The sum of `length` bytes at `bytes`, each read from memory (volatile: no shortcuts). */
static ULONG64 sum_bytes(const volatile UCHAR *bytes, ULONG64 length)
{
    ULONG64 sum = 0;

    for (ULONG64 i = 0; i < length; i++)
        sum += bytes[i];
    return sum;
}

/* The same sum at DISPATCH_LEVEL (KeRaiseIrql and KeLowerIrql: the header's CR8 writes):
   no page fault can be serviced while it runs. */
static ULONG64 sum_bytes_at_dispatch(const volatile UCHAR *bytes, ULONG64 length)
{
    KIRQL old;
    ULONG64 sum;

    KeRaiseIrql(DISPATCH_LEVEL, &old);
    sum = sum_bytes(bytes, length);
    KeLowerIrql(old);
    return sum;
}

static NTSTATUS DeviceControl(PDEVICE_OBJECT DeviceObject, PIRP Irp)
{
    PIO_STACK_LOCATION stack = IoGetCurrentIrpStackLocation(Irp);
    const UCHAR *user = stack->Parameters.DeviceIoControl.Type3InputBuffer;
    ULONG user_length = stack->Parameters.DeviceIoControl.InputBufferLength;
    ULONG64 sum;
    NTSTATUS status = STATUS_SUCCESS;

    UNREFERENCED_PARAMETER(DeviceObject);
    if (stack->Parameters.DeviceIoControl.OutputBufferLength < sizeof(sum))
        return CompleteRequest(Irp, STATUS_BUFFER_TOO_SMALL, 0);
    switch (stack->Parameters.DeviceIoControl.IoControlCode) {
    case IOCTL_PAGED_SUM_PASSIVE:
        sum = sum_bytes(paged, PAGED_BYTES);
        break;
    case IOCTL_PAGED_SUM_DISPATCH:
        sum = sum_bytes_at_dispatch(paged, PAGED_BYTES);
        break;
    case IOCTL_USER_SUM_DISPATCH:                   /* the bug: no probe, DISPATCH_LEVEL */
        sum = sum_bytes_at_dispatch(user, user_length);
        break;
    case IOCTL_USER_SUM_PASSIVE:                    /* still no probe, but pageable is fine */
        sum = sum_bytes(user, user_length);
        break;
    default:
        return CompleteRequest(Irp, STATUS_INVALID_DEVICE_REQUEST, 0);
    }
    /* The __try covers the calls made in it (clang's SEH here is synchronous): the probe
       and the copy (RtlCopyMemory is memcpy, an import). */
    __try {
        ProbeForWrite(Irp->UserBuffer, sizeof(sum), 1);
        RtlCopyMemory(Irp->UserBuffer, &sum, sizeof(sum));
    } __except (EXCEPTION_EXECUTE_HANDLER) {
        status = GetExceptionCode();
    }
    return CompleteRequest(Irp, status, NT_SUCCESS(status) ? sizeof(sum) : 0);
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNICODE_STRING name;
    PDEVICE_OBJECT device;
    NTSTATUS status;

    UNREFERENCED_PARAMETER(RegistryPath);
    paged = ExAllocatePoolWithTag(PagedPool, PAGED_BYTES, PAGED_TAG);
    if (paged == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    for (ULONG i = 0; i < PAGED_BYTES; i++)
        paged[i] = (UCHAR)((i * 7 + 3) & 0xFF);
    DbgPrint("pagedpool.sys: %u bytes of PagedPool at %p\n", PAGED_BYTES, paged);
    RtlInitUnicodeString(&name, L"\\Device\\PagedPool");
    status = IoCreateDevice(DriverObject, 0, &name, FILE_DEVICE_UNKNOWN, 0, FALSE, &device);
    if (!NT_SUCCESS(status)) {
        ExFreePoolWithTag(paged, PAGED_TAG);
        return status;
    }
    DriverObject->MajorFunction[IRP_MJ_CREATE] = CreateClose;
    DriverObject->MajorFunction[IRP_MJ_CLOSE] = CreateClose;
    DriverObject->MajorFunction[IRP_MJ_DEVICE_CONTROL] = DeviceControl;
    return STATUS_SUCCESS;
}
