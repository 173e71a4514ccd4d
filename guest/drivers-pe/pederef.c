/*
 * pederef.sys: one PsLookupProcessByProcessId (of id 4, the System process, the
 * one DriverEntry runs in), two ObDereferenceObject: the
 * second releases a reference the driver does not hold, bug check 0x18
 * REFERENCE_BY_POINTER (object type, the object, 0, 0).
 */
#include <ntifs.h>

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    PEPROCESS process;

    UNREFERENCED_PARAMETER(DriverObject);
    UNREFERENCED_PARAMETER(RegistryPath);

    if (!NT_SUCCESS(PsLookupProcessByProcessId((HANDLE)4, &process)))
        return STATUS_UNSUCCESSFUL;
    DbgPrint("pederef.sys: %d\n", (int)ObDereferenceObject(process));
    ObDereferenceObject(process);
    DbgPrint("pederef.sys: dereferenced twice?!\n");
    return STATUS_SUCCESS;
}
