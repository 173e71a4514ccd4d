/*
 * pecrash.sys: the crash driver as a PE image. DriverEntry writes to a kernel
 * address that nothing maps (0xFFFF9000'00000000: in the kernel half, below
 * the pools). At ring 0 nobody catches it: bug check 0x50
 * PAGE_FAULT_IN_NONPAGED_AREA with parameters (0xFFFF900000000000, 2 = write,
 * the RIP of the store, 0), and "write succeeded?!" never appears.
 */
#include <ntddk.h>

/* From a volatile variable: the compiler emits the plain store, nothing it
   might "optimise" about a known-bad pointer. */
static volatile ULONG_PTR unmapped_address = 0xFFFF900000000000ULL;

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNREFERENCED_PARAMETER(DriverObject);
    UNREFERENCED_PARAMETER(RegistryPath);

    volatile ULONG *p = (volatile ULONG *)unmapped_address;

    DbgPrint("pecrash.sys: writing to an unmapped kernel address\n");
    *p = 1;
    DbgPrint("write succeeded?!\n");
    return STATUS_UNSUCCESSFUL;
}
