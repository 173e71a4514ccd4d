/*
 * peirqlgp.sys: a MOV to CR8 with a reserved bit set. CR8 holds 4 bits (CR8[3:0] is
 * TPR[7:4], Intel SDM Vol. 3A 10.8.6); bits 63:4 are reserved and writing a 1 to any of
 * them is #GP(0) (SDM Vol. 2B, MOV to control registers). At ring 0 that is a bug check.
 * It includes only the WDK's <ntddk.h>.
 */
#include <ntddk.h>

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNREFERENCED_PARAMETER(DriverObject);
    UNREFERENCED_PARAMETER(RegistryPath);
    DbgPrint("peirqlgp.sys: writing 0x12 to CR8\n");
    __writecr8(0x12);
    DbgPrint("peirqlgp.sys: CR8 took 0x12?!\n");
    return STATUS_SUCCESS;
}
