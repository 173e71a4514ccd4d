/*
 * rowrite.sys: a driver writes to its own read-only data. The const global
 * below lives in .rodata, which the loader maps read-only (link/driver.ld),
 * so the store is a #PF on a present page at ring 0. With CR0.WP set the
 * CPU enforces R/W = 0 at ring 0 too; the kernel does not survive its own
 * fault.
 *
 * The emulator should print
 *   rowrite.sys: writing read-only data at FFFFF800xxxxxxxx
 * and then bug-check 0xBE ATTEMPTED_WRITE_TO_READONLY_MEMORY with the
 * printed address as parameter 1. Every process stops.
 */
#include <ddk/ntddk.h>

/* Initialised and const: gcc places it in .rodata (hidden: no GOT slot, no relocation). */
const ULONG read_only_value = 42;

NTSTATUS NTAPI DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNREFERENCED_PARAMETER(DriverObject);
    UNREFERENCED_PARAMETER(RegistryPath);

    /* Casting const away makes the write undefined in C, which is the point; volatile keeps it. */
    volatile ULONG *p = (volatile ULONG *)&read_only_value;

    DbgPrint("rowrite.sys: writing read-only data at %p\n", (PVOID)p);
    *p = 1;
    DbgPrint("write succeeded?! value %u\n", read_only_value);
    return STATUS_UNSUCCESSFUL;
}
