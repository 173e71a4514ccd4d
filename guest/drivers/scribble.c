/*
 * scribble.sys: a driver with a bad index. It clears "its" table entry at an
 * index computed from an unchecked value that came out hugely negative: just
 * under 16 MiB before its own table. Drivers are loaded 16 MiB apart, so that
 * address lies in the previous driver's image: exactly on ticket.sys's counter
 * (tests/nt/test_drivers.py checks the geometry from both drivers' symbols).
 * Nothing faults: the page is mapped and writable, and kernel memory is one
 * space. ticket.sys just starts handing out ticket 0.
 */
#include <ddk/ntddk.h>

static volatile ULONG table[4] = {1, 2, 3, 4};     /* the only object in .data */

NTSTATUS NTAPI DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    /* The bug: a "computed" index (volatile: gcc would see through a constant). */
    volatile LONG_PTR computed = -(LONG_PTR)(16 * 1024 * 1024 / sizeof(ULONG)) + 4;
    LONG_PTR index = computed;

    (void)DriverObject, (void)RegistryPath;
    DbgPrint("scribble.sys: clearing table[%lld] at %p\n", (long long)index,
             (void *)&table[index]);
    table[index] = 0;
    return STATUS_SUCCESS;
}
