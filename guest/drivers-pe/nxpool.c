/*
 * nxpool.sys: code in pool. It writes a `ret` into NonPagedPool (executable, as
 * before Windows 8) and calls it: fine. Then the same into NonPagedPoolNx and calls
 * it: the page's NX bit stops the fetch, bug check 0xFC
 * ATTEMPTED_EXECUTE_OF_NOEXECUTE_MEMORY (address, PTE, 0, 0).
 */
#include <ntddk.h>

typedef void (*routine)(void);

/* IRP_MJ_CREATE and IRP_MJ_CLOSE: open and close succeed (a driver without these routines
   cannot be opened: Windows' default MajorFunction entry, IopInvalidDeviceRequest, fails
   the request with STATUS_INVALID_DEVICE_REQUEST). */
static NTSTATUS CreateClose(PDEVICE_OBJECT DeviceObject, PIRP Irp)
{
    UNREFERENCED_PARAMETER(DeviceObject);
    Irp->IoStatus.Status = STATUS_SUCCESS;
    Irp->IoStatus.Information = 0;
    IoCompleteRequest(Irp, IO_NO_INCREMENT);
    return STATUS_SUCCESS;
}

static void call_a_ret_in(POOL_TYPE pool, const char *name)
{
    unsigned char *code = ExAllocatePoolWithTag(pool, 16, 0x7478654E);   /* 'Next' */

    code[0] = 0xC3;                          /* ret */
    DbgPrint("nxpool.sys: calling a ret in %s at %p\n", name, code);
    ((routine)code)();
    DbgPrint("nxpool.sys: it returned\n");
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNREFERENCED_PARAMETER(RegistryPath);
    DriverObject->MajorFunction[IRP_MJ_CREATE] = CreateClose;
    DriverObject->MajorFunction[IRP_MJ_CLOSE] = CreateClose;
    call_a_ret_in(NonPagedPool, "NonPagedPool");
    call_a_ret_in(NonPagedPoolNx, "NonPagedPoolNx");
    return STATUS_SUCCESS;
}
