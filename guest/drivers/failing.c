/*
 * failing.sys: DriverEntry reports failure. Nothing is wrong with the
 * machine: a driver that cannot start (missing hardware, bad configuration)
 * returns an error status, and the kernel unloads it and goes on.
 *
 * The emulator should print
 *   failing.sys: DriverEntry returns STATUS_UNSUCCESSFUL
 * then report that the driver's DriverEntry returned 0xC0000001
 * (STATUS_UNSUCCESSFUL), unload it (its pages are freed) and keep running
 * everything else.
 */
#include <ddk/ntddk.h>

NTSTATUS NTAPI DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNREFERENCED_PARAMETER(DriverObject);
    UNREFERENCED_PARAMETER(RegistryPath);

    DbgPrint("failing.sys: DriverEntry returns STATUS_UNSUCCESSFUL\n");
    return STATUS_UNSUCCESSFUL;
}
