/*
 * peirqlinit.sys: CR8 moves in INIT and in .text. DriverEntry, in INIT (freed once it has
 * returned), and DriverUnload, in .text, each print the IRQL read through the header's
 * inline KeGetCurrentIrql (`mov reg, cr8`). The hooks on INIT's moves go with INIT; those
 * in .text stay. It includes only the WDK's <ntddk.h>.
 */
#include <ntddk.h>

#pragma comment(linker, "/SECTION:INIT,ERD")   /* execute, read, discardable */

DRIVER_INITIALIZE DriverEntry;
#pragma alloc_text(INIT, DriverEntry)

static VOID Unload(PDRIVER_OBJECT DriverObject)
{
    UNREFERENCED_PARAMETER(DriverObject);
    DbgPrint("peirqlinit.sys: DriverUnload at IRQL %u\n", KeGetCurrentIrql());
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNREFERENCED_PARAMETER(RegistryPath);
    DbgPrint("peirqlinit.sys: DriverEntry in INIT at IRQL %u\n", KeGetCurrentIrql());
    DriverObject->DriverUnload = Unload;
    return STATUS_SUCCESS;
}
