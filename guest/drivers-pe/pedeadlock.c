/*
 * pedeadlock.sys: DriverEntry waits, with no timeout, on an event nothing will
 * ever set (no device is busy, no timer pending): the machine stops as for a
 * deadlock (emu run exits 123) and "never" is never printed.
 */
#include <ntddk.h>

static KEVENT never;

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNREFERENCED_PARAMETER(DriverObject);
    UNREFERENCED_PARAMETER(RegistryPath);

    KeInitializeEvent(&never, NotificationEvent, FALSE);
    DbgPrint("pedeadlock.sys: waiting forever\n");
    KeWaitForSingleObject(&never, Executive, KernelMode, FALSE, NULL);
    DbgPrint("never\n");
    return STATUS_SUCCESS;
}
