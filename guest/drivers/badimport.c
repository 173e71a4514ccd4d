/*
 * badimport.sys: a driver that imports a routine the kernel does not export.
 * IoDoesNotExist stays an undefined symbol in .dynsym, with an
 * R_X86_64_GLOB_DAT relocation for its .got slot, like any import; the
 * loader finds no export of that name and must refuse the image before
 * DriverEntry runs: the emulator should report the missing import
 * "IoDoesNotExist" by name, load nothing and go on. Nothing is printed by
 * the driver.
 */
#include <ddk/ntddk.h>

/* Declared here, not in ntddk.h: no kernel has this export. */
extern NTSTATUS NTAPI IoDoesNotExist(VOID);

NTSTATUS NTAPI DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNREFERENCED_PARAMETER(DriverObject);
    UNREFERENCED_PARAMETER(RegistryPath);

    DbgPrint("badimport.sys: DriverEntry ran?!\n");
    return IoDoesNotExist();
}
