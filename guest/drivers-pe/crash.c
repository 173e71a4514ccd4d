/*
 * crash.sys: a driver bug. DriverEntry writes to a kernel address that
 * nothing maps (0xFFFF9000'00000000: in the kernel half, below the pools).
 * In user mode that would kill one process; at ring 0 there is nobody to
 * blame but the kernel itself, which shares its address space with every
 * process, so the machine stops.
 *
 * The emulator should print
 *   crash.sys: writing to an unmapped kernel address
 * and then bug-check 0x50 PAGE_FAULT_IN_NONPAGED_AREA with parameters
 * (0xFFFF900000000000, 2 = write, the RIP of the store, 0); every process
 * stops, and "write succeeded?!" never appears.
 */
#include <ntddk.h>

/*
 * The address comes from a volatile variable (in .data): the compiler cannot
 * see the constant, so it emits the plain store we want and nothing it might
 * "optimise" about a known-bad pointer.
 */
static volatile ULONG_PTR unmapped_address = 0xFFFF900000000000ULL;

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
    UNREFERENCED_PARAMETER(RegistryPath);

    volatile ULONG *p = (volatile ULONG *)unmapped_address;

    DriverObject->MajorFunction[IRP_MJ_CREATE] = CreateClose;
    DriverObject->MajorFunction[IRP_MJ_CLOSE] = CreateClose;
    DbgPrint("crash.sys: writing to an unmapped kernel address\n");
    *p = 1;
    DbgPrint("write succeeded?!\n");
    return STATUS_UNSUCCESSFUL;
}
