/*
 * noentry.sys: a well-formed PE32+ driver with no entry point. It is linked with
 * --no-entry, so its AddressOfEntryPoint is 0: there is no DriverEntry to call (its only
 * function is not the entry, and nothing names it). The loader must refuse the image
 * before running any of it: the emulator reports that noentry.sys has no DriverEntry,
 * loads nothing and goes on. Nothing is printed by the driver.
 */
#include <ntddk.h>

/* Would print, if anything called it; marked used so that the image is not empty. */
__attribute__((used)) static NTSTATUS NotTheEntry(PDRIVER_OBJECT DriverObject,
                                                  PUNICODE_STRING RegistryPath)
{
    UNREFERENCED_PARAMETER(DriverObject);
    UNREFERENCED_PARAMETER(RegistryPath);

    DbgPrint("noentry.sys: this should never run?!\n");
    return STATUS_SUCCESS;
}
