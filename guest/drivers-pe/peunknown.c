/*
 * peunknown.sys: imports a routine the emulator's kernel does not export
 * (ZwCreateKey, from ntoskrnl.exe). Windows refuses to start a driver whose
 * imports it cannot resolve; so does the emulator, at load, naming it:
 *   peunknown.sys: unknown import ntoskrnl.exe!ZwCreateKey (...)
 * DriverEntry never runs.
 */
#include <ntddk.h>

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    HANDLE key;
    OBJECT_ATTRIBUTES attributes;

    UNREFERENCED_PARAMETER(DriverObject);
    InitializeObjectAttributes(&attributes, RegistryPath, OBJ_KERNEL_HANDLE, NULL, NULL);
    return ZwCreateKey(&key, KEY_READ, &attributes, 0, NULL, 0, NULL);
}
