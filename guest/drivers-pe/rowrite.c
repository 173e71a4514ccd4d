/*
 * rowrite.sys: a driver writes to its own read-only data. The const global
 * below lives in .rdata, which the loader maps read-only (its section
 * characteristics have no IMAGE_SCN_MEM_WRITE), so the store is a #PF on a
 * present page at ring 0. With CR0.WP set the CPU enforces R/W = 0 at ring 0
 * too; the kernel does not survive its own fault.
 *
 * The emulator should print
 *   rowrite.sys: writing read-only data at FFFFF800xxxxxxxx
 * and then bug-check 0xBE ATTEMPTED_WRITE_TO_READONLY_MEMORY with the
 * printed address as parameter 1. Every process stops.
 */
#include <ntddk.h>

/* Initialised and const: the compiler places it in .rdata. */
const ULONG read_only_value = 42;

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

    /* Casting const away makes the write undefined in C, which is the point; volatile keeps it. */
    volatile ULONG *p = (volatile ULONG *)&read_only_value;

    DriverObject->MajorFunction[IRP_MJ_CREATE] = CreateClose;
    DriverObject->MajorFunction[IRP_MJ_CLOSE] = CreateClose;
    DbgPrint("rowrite.sys: writing read-only data at %p\n", (PVOID)p);
    *p = 1;
    DbgPrint("write succeeded?! value %u\n", read_only_value);
    return STATUS_UNSUCCESSFUL;
}
