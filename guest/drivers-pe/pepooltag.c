/*
 * pepooltag.sys: frees a block with a tag that is not the one it was allocated with.
 * Windows: bug check 0xC2 BAD_POOL_CALLER (0xA, the address, the allocator's tag 'Mine',
 * the tag used 'Your'). It prints "pepooltag.sys: freeing 0x<address> with the wrong tag".
 */
#include <ntddk.h>

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    PVOID block = ExAllocatePoolWithTag(PagedPool, 32, 'eniM');

    UNREFERENCED_PARAMETER(DriverObject);
    UNREFERENCED_PARAMETER(RegistryPath);
    DbgPrint("pepooltag.sys: freeing %p with the wrong tag\n", block);
    ExFreePoolWithTag(block, 'ruoY');
    return STATUS_SUCCESS;
}
