/*
 * pecr8poolgp.sys: a `mov cr8, rax` with a reserved bit (bits 63:4) in code run from pool.
 * DriverEntry copies `mov rax, rcx; mov cr8, rax; ret` into NonPagedPoolExecute and calls
 * it with 0x12: #GP(0) at the pool's `mov cr8` (SDM Vol. 2B, MOV to CR8), CR8 unchanged.
 */
#include <ntddk.h>

typedef VOID (*SET_CR8)(ULONG64 NewIrql);

static const UCHAR SetCr8[] = {0x48, 0x89, 0xC8, 0x44, 0x0F, 0x22, 0xC0, 0xC3};

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    PUCHAR code = ExAllocatePoolWithTag(NonPagedPoolExecute, sizeof(SetCr8), 'eDoC');

    UNREFERENCED_PARAMETER(DriverObject);
    UNREFERENCED_PARAMETER(RegistryPath);
    if (code == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    RtlCopyMemory(code, SetCr8, sizeof(SetCr8));
    DbgPrint("pecr8poolgp.sys: writing 0x12 to CR8 from pool at %p\n", code);
    ((SET_CR8)code)(0x12);
    DbgPrint("pecr8poolgp.sys: not reached\n");
    return STATUS_SUCCESS;
}
