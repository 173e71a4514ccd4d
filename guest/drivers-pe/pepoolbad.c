/*
 * pepoolbad.sys: hands ExFreePool an address that never came from the pool: a variable in
 * its own image. Windows: bug check 0xC2 BAD_POOL_CALLER (0x42, the address, 0, 0), "the
 * current thread attempted to free a virtual address that was never in any pool".
 * It prints "pepoolbad.sys: freeing 0x<address>, not pool".
 */
#include <ntddk.h>

static ULONG64 NotPool[4];

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNREFERENCED_PARAMETER(DriverObject);
    UNREFERENCED_PARAMETER(RegistryPath);
    DbgPrint("pepoolbad.sys: freeing %p, not pool\n", (PVOID)NotPool);
    ExFreePool(NotPool);
    return STATUS_SUCCESS;
}
