/*
 * pepooltwice.sys: frees a pool block twice. Windows stops the machine at the second
 * ExFreePoolWithTag: bug check 0xC2 BAD_POOL_CALLER (7, 0, 0, the block's address).
 * It prints "pepooltwice.sys: freeing 0x<address> twice" first.
 */
#include <ntddk.h>

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    PVOID block = ExAllocatePoolWithTag(NonPagedPoolNx, 32, 'niwT');

    UNREFERENCED_PARAMETER(DriverObject);
    UNREFERENCED_PARAMETER(RegistryPath);
    DbgPrint("pepooltwice.sys: freeing %p twice\n", block);
    ExFreePoolWithTag(block, 'niwT');
    ExFreePoolWithTag(block, 'niwT');
    return STATUS_SUCCESS;
}
