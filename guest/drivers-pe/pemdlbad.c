/*
 * pemdlbad.sys: locks a user-mode buffer that is not there. DriverEntry runs in the System
 * process, whose user half is empty, and probes 16 bytes at 0x10000 for UserMode reading
 * without __try/__except: MmProbeAndLockPages raises STATUS_ACCESS_VIOLATION and nothing
 * handles it, so Windows stops with bug check 0x7E SYSTEM_THREAD_EXCEPTION_NOT_HANDLED
 * (0xC0000005, the address it was raised at, 0, 0). At DISPATCH_LEVEL the page fault inside
 * MmProbeAndLockPages comes first: bug check 0x0A IRQL_NOT_LESS_OR_EQUAL.
 * It prints "pemdlbad.sys: locking 16 bytes at 0x10000" first.
 */
#include <ntddk.h>

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    PMDL mdl = IoAllocateMdl((PVOID)0x10000, 16, FALSE, FALSE, NULL);

    UNREFERENCED_PARAMETER(DriverObject);
    UNREFERENCED_PARAMETER(RegistryPath);
    DbgPrint("pemdlbad.sys: locking 16 bytes at 0x10000\n");
    MmProbeAndLockPages(mdl, UserMode, IoReadAccess);
    DbgPrint("pemdlbad.sys: not reached\n");
    IoFreeMdl(mdl);
    return STATUS_SUCCESS;
}
