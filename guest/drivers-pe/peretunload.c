/*
 * peretunload.sys: DriverUnload acquires a spin lock (raising the IRQL to DISPATCH_LEVEL)
 * and returns without releasing it: at a clean shutdown, bug check 0xE1
 * WORKER_THREAD_RETURNED_AT_BAD_IRQL (DriverUnload, 2, 0, 0), as the system worker thread
 * Windows unloads drivers in checks when the work returns.
 */
#include <ntddk.h>

static KSPIN_LOCK Lock;

static VOID Unload(PDRIVER_OBJECT DriverObject)
{
    KIRQL old;

    UNREFERENCED_PARAMETER(DriverObject);
    KeAcquireSpinLock(&Lock, &old);
    DbgPrint("peretunload.sys: DriverUnload returns holding a spin lock, at IRQL %u\n",
             KeGetCurrentIrql());
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNREFERENCED_PARAMETER(RegistryPath);
    KeInitializeSpinLock(&Lock);
    DriverObject->DriverUnload = Unload;
    return STATUS_SUCCESS;
}
