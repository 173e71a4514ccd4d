/*
 * pesehentry.sys: DriverEntry calls ProbeForRead on a kernel address with no __try around
 * it. Nothing catches the STATUS_ACCESS_VIOLATION: DriverEntry runs in a system thread on
 * Windows, whose filter stops the machine with bug check 0x7E
 * SYSTEM_THREAD_EXCEPTION_NOT_HANDLED (0xC0000005, the address, the exception record,
 * the context record).
 */
#include <ntddk.h>

static volatile ULONG_PTR kernel_address = 0xFFFF900000000000ULL;

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNREFERENCED_PARAMETER(DriverObject);
    UNREFERENCED_PARAMETER(RegistryPath);
    DbgPrint("pesehentry.sys: ProbeForRead of a kernel address, no handler\n");
    ProbeForRead((PVOID)kernel_address, 4, 1);
    DbgPrint("pesehentry.sys: not reached\n");
    return STATUS_SUCCESS;
}
