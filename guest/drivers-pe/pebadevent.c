/*
 * pebadevent.sys: KeSetEvent on a pointer to nothing (0xFFFF9000'00000000).
 * KeSetEvent reads the event's SignalState there, and faults inside
 * nt!KeSetEvent as on Windows: bug check 0x50 (0xFFFF900000000004, 0 = read,
 * nt!KeSetEvent's address, 0), the driver blamed as its caller.
 */
#include <ntddk.h>

static volatile ULONG_PTR nowhere = 0xFFFF900000000000ULL;

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNREFERENCED_PARAMETER(DriverObject);
    UNREFERENCED_PARAMETER(RegistryPath);
    DbgPrint("pebadevent.sys: KeSetEvent on an unmapped address\n");
    KeSetEvent((PRKEVENT)nowhere, IO_NO_INCREMENT, FALSE);
    DbgPrint("set?!\n");
    return STATUS_SUCCESS;
}
