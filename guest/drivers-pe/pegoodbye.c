/*
 * pegoodbye.sys: a driver that can be unloaded. DriverEntry sets DriverUnload; when every
 * process has ended normally the I/O manager calls it (drivers in reverse load order).
 *
 * The emulator should print
 *   pegoodbye.sys: DriverEntry
 * at boot and
 *   pegoodbye.sys: DriverUnload
 * at a clean shutdown.
 */
#include <ntddk.h>

DRIVER_INITIALIZE DriverEntry;
DRIVER_UNLOAD Unload;

VOID Unload(PDRIVER_OBJECT DriverObject)
{
    UNREFERENCED_PARAMETER(DriverObject);

    DbgPrint("pegoodbye.sys: DriverUnload\n");
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNREFERENCED_PARAMETER(RegistryPath);

    DbgPrint("pegoodbye.sys: DriverEntry\n");
    DriverObject->DriverUnload = Unload;
    return STATUS_SUCCESS;
}
