/*
 * peevent.sys: kernel events and waits at PASSIVE_LEVEL, in DriverEntry.
 * KeInitializeEvent writes the DISPATCHER_HEADER as wdm.h lays it out (Type,
 * Size in LONGs, SignalState, an empty WaitListHead), so the driver reading
 * the header and KeReadStateEvent agree. KeSetEvent and KeResetEvent return
 * the previous state. A wait on a signalled event returns STATUS_SUCCESS at
 * once, and a synchronization event resets as it satisfies it; a wait with a
 * timeout that expires returns STATUS_TIMEOUT (0x102) with the interrupt time
 * advanced by exactly the timeout (KeQueryInterruptTime is wdm.h's macro over
 * KUSER_SHARED_DATA); so does KeDelayExecutionThread. A positive timeout is an
 * absolute system time: one 2 ms ahead waits 2 ms, one in the past only tests.
 *
 * The emulator should print
 *   peevent.sys: header type 0 size 6 state 0 list empty 1
 *   peevent.sys: set 0 set 1 read 1 reset 1 read 0 clear 0
 *   peevent.sys: notification wait 0x0 0x0 state 1
 *   peevent.sys: synchronization type 1 wait 0x0 state 0 poll 0x102
 *   peevent.sys: timeout 0x102 after 10000
 *   peevent.sys: any 0x1 all 0x0 states 1 0
 *   peevent.sys: delay 0x0 after 5000
 *   peevent.sys: absolute 0x102 after 20000 past 0x102 after 0
 */
#include <ntddk.h>

KEVENT notification, synchronization;     /* global: exported, so the test finds them */

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    LARGE_INTEGER zero, timeout, delay;
    ULONGLONG before;
    NTSTATUS first, second;
    PVOID both[2];
    LONG set1, set2, read1, reset, read2;

    UNREFERENCED_PARAMETER(DriverObject);
    UNREFERENCED_PARAMETER(RegistryPath);

    KeInitializeEvent(&notification, NotificationEvent, FALSE);
    DbgPrint("peevent.sys: header type %d size %d state %d list empty %d\n",
             notification.Header.Type, notification.Header.Size,
             notification.Header.SignalState,
             IsListEmpty(&notification.Header.WaitListHead));

    set1 = KeSetEvent(&notification, IO_NO_INCREMENT, FALSE);
    set2 = KeSetEvent(&notification, IO_NO_INCREMENT, FALSE);
    read1 = KeReadStateEvent(&notification);
    reset = KeResetEvent(&notification);
    read2 = KeReadStateEvent(&notification);
    KeSetEvent(&notification, IO_NO_INCREMENT, FALSE);
    KeClearEvent(&notification);
    DbgPrint("peevent.sys: set %d set %d read %d reset %d read %d clear %d\n", set1, set2,
             read1, reset, read2, notification.Header.SignalState);

    KeSetEvent(&notification, IO_NO_INCREMENT, FALSE);
    first = KeWaitForSingleObject(&notification, Executive, KernelMode, FALSE, NULL);
    second = KeWaitForSingleObject(&notification, Executive, KernelMode, FALSE, NULL);
    DbgPrint("peevent.sys: notification wait 0x%x 0x%x state %d\n", first, second,
             KeReadStateEvent(&notification));

    KeInitializeEvent(&synchronization, SynchronizationEvent, TRUE);
    zero.QuadPart = 0;
    first = KeWaitForSingleObject(&synchronization, Executive, KernelMode, FALSE, NULL);
    read1 = KeReadStateEvent(&synchronization);
    second = KeWaitForSingleObject(&synchronization, Executive, KernelMode, FALSE, &zero);
    DbgPrint("peevent.sys: synchronization type %d wait 0x%x state %d poll 0x%x\n",
             synchronization.Header.Type, first, read1, second);

    timeout.QuadPart = -10000;          /* 1 ms, relative */
    before = KeQueryInterruptTime();
    first = KeWaitForSingleObject(&synchronization, Executive, KernelMode, FALSE, &timeout);
    DbgPrint("peevent.sys: timeout 0x%x after %llu\n", first, KeQueryInterruptTime() - before);

    both[0] = &synchronization;
    both[1] = &notification;
    first = KeWaitForMultipleObjects(2, both, WaitAny, Executive, KernelMode, FALSE, NULL,
                                     NULL);
    KeSetEvent(&synchronization, IO_NO_INCREMENT, FALSE);
    second = KeWaitForMultipleObjects(2, both, WaitAll, Executive, KernelMode, FALSE, NULL,
                                      NULL);
    DbgPrint("peevent.sys: any 0x%x all 0x%x states %d %d\n", first, second,
             KeReadStateEvent(&notification), KeReadStateEvent(&synchronization));

    delay.QuadPart = -5000;
    before = KeQueryInterruptTime();
    first = KeDelayExecutionThread(KernelMode, FALSE, &delay);
    DbgPrint("peevent.sys: delay 0x%x after %llu\n", first, KeQueryInterruptTime() - before);

    KeQuerySystemTime(&timeout);                /* absolute: 2 ms from now */
    timeout.QuadPart += 20000;
    before = KeQueryInterruptTime();
    first = KeWaitForSingleObject(&synchronization, Executive, KernelMode, FALSE, &timeout);
    DbgPrint("peevent.sys: absolute 0x%x after %llu", first, KeQueryInterruptTime() - before);
    timeout.QuadPart -= 1000000;                /* absolute, in the past: a test */
    before = KeQueryInterruptTime();
    first = KeWaitForSingleObject(&synchronization, Executive, KernelMode, FALSE, &timeout);
    DbgPrint(" past 0x%x after %llu\n", first, KeQueryInterruptTime() - before);
    return STATUS_SUCCESS;
}
