/*
 * pehello.sys: the smallest real Windows driver. It includes only the WDK's
 * <ntddk.h> (mingw-w64's, shipped in the ziglang wheel) and builds, unchanged,
 * into a PE32+ image of the native subsystem that Windows would load too.
 *
 * The emulator should print
 *   pehello.sys: DriverEntry, registry path \Registry\Machine\System\CurrentControlSet\Services\pehello
 * and DriverEntry returns STATUS_SUCCESS: the driver stays loaded.
 */
#include <ntddk.h>

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNREFERENCED_PARAMETER(DriverObject);

    DbgPrint("pehello.sys: DriverEntry, registry path %wZ\n", RegistryPath);
    return STATUS_SUCCESS;
}
