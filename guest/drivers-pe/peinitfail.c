/*
 * peinitfail.sys: DriverEntry, in the discardable INIT section, fails. Windows then
 * unloads the driver: none of its pages (INIT or any other) stays mapped, and its
 * DriverUnload is never called.
 *
 * The emulator should print
 *   peinitfail.sys: DriverEntry returns STATUS_UNSUCCESSFUL
 * and go on without the driver.
 */
#include <ntddk.h>

DRIVER_INITIALIZE DriverEntry;
DRIVER_UNLOAD PeInitFailUnload;

#pragma comment(linker, "/SECTION:INIT,ERD")
#pragma alloc_text(INIT, DriverEntry)

VOID PeInitFailUnload(PDRIVER_OBJECT DriverObject)
{
    UNREFERENCED_PARAMETER(DriverObject);

    DbgPrint("peinitfail.sys: DriverUnload (never: DriverEntry failed)\n");
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNREFERENCED_PARAMETER(RegistryPath);

    DriverObject->DriverUnload = PeInitFailUnload;
    DbgPrint("peinitfail.sys: DriverEntry returns STATUS_UNSUCCESSFUL\n");
    return STATUS_UNSUCCESSFUL;
}
