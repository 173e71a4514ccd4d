/*
 * noentry.sys: a well-formed shared object without a DriverEntry symbol
 * (its only function is not exported, and it is not called DriverEntry).
 * The loader looks the entry point up by name in .dynsym and must refuse
 * the image before running any of it: the emulator should report that
 * noentry.sys has no DriverEntry, load nothing and go on.
 * Nothing is printed by the driver.
 */
#include <ddk/ntddk.h>

/* Would print, if anything called it; marked used so that the image is not empty. */
__attribute__((used)) static NTSTATUS NTAPI NotTheEntry(PDRIVER_OBJECT DriverObject,
                                                        PUNICODE_STRING RegistryPath)
{
    UNREFERENCED_PARAMETER(DriverObject);
    UNREFERENCED_PARAMETER(RegistryPath);

    DbgPrint("noentry.sys: this should never run?!\n");
    return STATUS_SUCCESS;
}
