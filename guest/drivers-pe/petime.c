/*
 * petime.sys: time as a driver reads it. On x64, wdm.h's KeQuerySystemTime,
 * KeQueryTickCount and KeQueryInterruptTime are macros reading
 * KUSER_SHARED_DATA at 0xFFFFF780'00000000; the machine keeps it current from
 * its clock (one instruction = 100 ns; the system time starts at 2026-01-01
 * 00:00:00 UTC; a tick is KeQueryTimeIncrement() = 156250, 15.625 ms).
 * KeQueryPerformanceCounter (hal.dll) counts at 10 MHz. After a delay of
 * two ticks each has moved by exactly that. Last, a write to the shared page:
 * it is read-only, bug check 0xBE ATTEMPTED_WRITE_TO_READONLY_MEMORY.
 *
 * The emulator should print (T the interrupt time at the first line)
 *   petime.sys: increment 156250 frequency 10000000
 *   petime.sys: system - interrupt 134116992000000000 tick*increment <= interrupt 1
 *   petime.sys: after the delay: interrupt +312500 system +312500 ticks +2 counter +312500
 *   petime.sys: writing KUSER_SHARED_DATA
 */
#include <ntddk.h>

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    LARGE_INTEGER system1, system2, ticks1, ticks2, counter1, counter2, frequency, delay;
    ULONGLONG interrupt1, interrupt2;
    ULONG increment = KeQueryTimeIncrement();

    UNREFERENCED_PARAMETER(DriverObject);
    UNREFERENCED_PARAMETER(RegistryPath);

    counter1 = KeQueryPerformanceCounter(&frequency);
    interrupt1 = KeQueryInterruptTime();
    KeQuerySystemTime(&system1);
    KeQueryTickCount(&ticks1);
    DbgPrint("petime.sys: increment %lu frequency %lld\n", increment, frequency.QuadPart);
    DbgPrint("petime.sys: system - interrupt %lld tick*increment <= interrupt %d\n",
             system1.QuadPart - (LONGLONG)interrupt1,
             (ULONGLONG)ticks1.QuadPart * increment <= interrupt1);

    delay.QuadPart = -2 * (LONGLONG)increment;
    KeDelayExecutionThread(KernelMode, FALSE, &delay);
    counter2 = KeQueryPerformanceCounter(NULL);
    interrupt2 = KeQueryInterruptTime();
    KeQuerySystemTime(&system2);
    KeQueryTickCount(&ticks2);
    DbgPrint("petime.sys: after the delay: interrupt +%llu system +%lld ticks +%lld "
             "counter +%lld\n", interrupt2 - interrupt1, system2.QuadPart - system1.QuadPart,
             ticks2.QuadPart - ticks1.QuadPart, counter2.QuadPart - counter1.QuadPart);

    DbgPrint("petime.sys: writing KUSER_SHARED_DATA\n");
    *(volatile ULONG64 *)SharedSystemTime = 0;
    DbgPrint("petime.sys: the write succeeded?!\n");
    return STATUS_SUCCESS;
}
