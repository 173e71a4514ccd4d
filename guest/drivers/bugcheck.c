/*
 * bugcheck.sys: a driver that stops the machine on purpose, as a driver
 * does when it finds its own state corrupt: KeBugCheckEx never returns.
 *
 * The emulator should print
 *   bugcheck.sys: calling KeBugCheckEx(0xE2, 1, 2, 3, 4)
 * and then bug-check 0xE2 MANUALLY_INITIATED_CRASH with parameters
 * (1, 2, 3, 4): the fifth argument (P4) travels on the stack, above the
 * 32-byte shadow space, so the four parameters check the convention too.
 * Every process stops.
 */
#include <ddk/ntddk.h>

NTSTATUS NTAPI DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNREFERENCED_PARAMETER(DriverObject);
    UNREFERENCED_PARAMETER(RegistryPath);

    DbgPrint("bugcheck.sys: calling KeBugCheckEx(0x%X, 1, 2, 3, 4)\n",
             MANUALLY_INITIATED_CRASH);
    KeBugCheckEx(MANUALLY_INITIATED_CRASH, 1, 2, 3, 4);
}
