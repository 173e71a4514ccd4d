/*
 * pemdltwice.sys: unlocks an MDL's pages twice. The second MmUnlockPages finds the MDL
 * unlocked: Windows stops with bug check 0x76 PROCESS_HAS_LOCKED_PAGES (1, the MDL, the
 * pages still locked in the process, 0): "the driver is attempting to unlock process
 * memory pages that are not locked". It prints "pemdltwice.sys: unlocking MDL 0x<address>
 * twice" first.
 */
#include <ntddk.h>

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    PVOID buffer = ExAllocatePoolWithTag(NonPagedPoolNx, 64, 'ciwT');
    PMDL mdl = IoAllocateMdl(buffer, 64, FALSE, FALSE, NULL);

    UNREFERENCED_PARAMETER(DriverObject);
    UNREFERENCED_PARAMETER(RegistryPath);
    MmProbeAndLockPages(mdl, KernelMode, IoReadAccess);
    DbgPrint("pemdltwice.sys: unlocking MDL %p twice\n", mdl);
    MmUnlockPages(mdl);
    MmUnlockPages(mdl);
    return STATUS_SUCCESS;
}
