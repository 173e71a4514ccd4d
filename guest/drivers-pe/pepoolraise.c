/*
 * pepoolraise.sys: asks ExAllocatePool2 for 1 GiB with POOL_FLAG_RAISE_ON_FAILURE and no
 * __try/__except. The allocation fails, so the routine raises STATUS_INSUFFICIENT_RESOURCES
 * (0xC000009A); with no handler in DriverEntry (a system thread's), Windows stops with bug
 * check 0x7E (0xC000009A, the address it was raised at, the EXCEPTION_RECORD, the CONTEXT).
 * It prints "pepoolraise.sys: 1 GiB, raise on failure" first.
 */
#include <ntddk.h>

typedef ULONG64 POOL_FLAGS;
#define POOL_FLAG_RAISE_ON_FAILURE 0x0000000000000020ULL
#define POOL_FLAG_NON_PAGED        0x0000000000000040ULL
typedef PVOID (NTAPI *EX_ALLOCATE_POOL2)(POOL_FLAGS Flags, SIZE_T NumberOfBytes, ULONG Tag);

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNICODE_STRING name;
    EX_ALLOCATE_POOL2 allocate2;
    PVOID block;

    UNREFERENCED_PARAMETER(DriverObject);
    UNREFERENCED_PARAMETER(RegistryPath);
    RtlInitUnicodeString(&name, L"ExAllocatePool2");
    allocate2 = (EX_ALLOCATE_POOL2)MmGetSystemRoutineAddress(&name);
    DbgPrint("pepoolraise.sys: 1 GiB, raise on failure\n");
    block = allocate2(POOL_FLAG_NON_PAGED | POOL_FLAG_RAISE_ON_FAILURE, (SIZE_T)1 << 30, 'esiR');
    DbgPrint("pepoolraise.sys: not reached %p\n", block);
    return STATUS_SUCCESS;
}
