/*
 * nxpool.sys: code in pool. It writes a `ret` into NonPagedPool (executable, as
 * before Windows 8) and calls it: fine. Then the same into NonPagedPoolNx and calls
 * it: the page's NX bit stops the fetch, bug check 0xFC
 * ATTEMPTED_EXECUTE_OF_NOEXECUTE_MEMORY (address, PTE, 0, 0).
 */
#include <ddk/ntddk.h>

typedef void (*routine)(void);

static void call_a_ret_in(POOL_TYPE pool, const char *name)
{
    unsigned char *code = ExAllocatePoolWithTag(pool, 16, 0x7478654E);   /* 'Next' */

    code[0] = 0xC3;                          /* ret */
    DbgPrint("nxpool.sys: calling a ret in %s at %p\n", name, code);
    ((routine)code)();
    DbgPrint("nxpool.sys: it returned\n");
}

NTSTATUS NTAPI DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    (void)DriverObject, (void)RegistryPath;
    call_a_ret_in(NonPagedPool, "NonPagedPool");
    call_a_ret_in(NonPagedPoolNx, "NonPagedPoolNx");
    return STATUS_SUCCESS;
}
