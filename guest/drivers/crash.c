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
#include <ddk/ntddk.h>

/*
 * The address comes from a volatile variable (in .data): gcc cannot see the
 * constant, so it emits the plain store we want and nothing it might
 * "optimise" about a known-bad pointer.
 */
static volatile ULONG_PTR unmapped_address = 0xFFFF900000000000ULL;

NTSTATUS NTAPI DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNREFERENCED_PARAMETER(DriverObject);
    UNREFERENCED_PARAMETER(RegistryPath);

    volatile ULONG *p = (volatile ULONG *)unmapped_address;

    DbgPrint("crash.sys: writing to an unmapped kernel address\n");
    *p = 1;
    DbgPrint("write succeeded?!\n");
    return STATUS_UNSUCCESSFUL;
}
