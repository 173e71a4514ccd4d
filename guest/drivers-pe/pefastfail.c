/*
 * pefastfail.sys: DriverEntry calls __fastfail(FAST_FAIL_INVALID_ARG) (int 0x29 with the
 * code in RCX): at ring 0 that is bug check 0x139 KERNEL_SECURITY_CHECK_FAILURE with the
 * code (5) as its first parameter; no handler runs.
 */
#include <ntddk.h>

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNREFERENCED_PARAMETER(DriverObject);
    UNREFERENCED_PARAMETER(RegistryPath);
    DbgPrint("pefastfail.sys: __fastfail(5)\n");
    __fastfail(5);
}
