/*
 * scribble.sys: a driver with a bad index. It clears "its" table entry at an
 * index computed from an unchecked value that came out hugely negative: 16 MiB
 * before its own table. Drivers are loaded 16 MiB apart and both images put
 * their only global first in .data, so that address lies in the previous
 * driver's image: exactly on ticket.sys's counter (tests/nt/test_drivers.py
 * checks the geometry from both drivers' symbols).
 * Nothing faults: the page is mapped and writable, and kernel memory is one
 * space. ticket.sys just starts handing out ticket 0.
 */
#include <ntddk.h>

static volatile ULONG table[4] = {1, 2, 3, 4};     /* the only object in .data */

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

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    /* The bug: a "computed" index (volatile: the compiler would see through a constant). */
    volatile LONG_PTR computed = -(LONG_PTR)(16 * 1024 * 1024 / sizeof(ULONG));
    LONG_PTR index = computed;

    UNREFERENCED_PARAMETER(RegistryPath);
    DriverObject->MajorFunction[IRP_MJ_CREATE] = CreateClose;
    DriverObject->MajorFunction[IRP_MJ_CLOSE] = CreateClose;
    DbgPrint("scribble.sys: clearing table[%lld] at %p\n", (long long)index,
             (void *)&table[index]);
    table[index] = 0;
    return STATUS_SUCCESS;
}
