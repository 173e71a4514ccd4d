/*
 * peretentry.sys: DriverEntry raises the IRQL to DISPATCH_LEVEL (KeRaiseIrql: a `mov cr8`)
 * and returns without lowering it. Windows calls DriverEntry from a system worker thread,
 * which checks the IRQL when the work returns: bug check 0xE1
 * WORKER_THREAD_RETURNED_AT_BAD_IRQL (DriverEntry, 2, 0, 0).
 */
#include <ntddk.h>

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    KIRQL old;

    UNREFERENCED_PARAMETER(DriverObject);
    UNREFERENCED_PARAMETER(RegistryPath);
    KeRaiseIrql(DISPATCH_LEVEL, &old);
    DbgPrint("peretentry.sys: DriverEntry returns at IRQL %u, called at %u\n",
             KeGetCurrentIrql(), old);
    return STATUS_SUCCESS;
}
