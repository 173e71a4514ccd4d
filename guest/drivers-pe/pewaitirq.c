/*
 * pewaitirq.sys: a wait that the hardware satisfies. DriverEntry starts the
 * slow device (an OUT to port 0x300) and waits, with no timeout, on a
 * synchronization event; the device's interrupt comes 200,000 instructions
 * (20 ms) later and its service routine, SlowIsr, sets the event, so the wait
 * returns STATUS_SUCCESS with the interrupt time advanced by exactly the
 * device's latency. The set synchronization event goes to the waiter, so it
 * reads not signalled right after KeSetEvent, as on Windows. (The test connects SlowIsr to the device's vector itself:
 * IoConnectInterrupt is not bound to PE drivers yet.) A second wait, with a
 * 1 ms timeout and nothing to set the event, returns STATUS_TIMEOUT.
 *
 * Connected instead, WaitingIsr polls the event (a zero timeout: allowed at
 * any IRQL up to DISPATCH_LEVEL, STATUS_TIMEOUT) and then waits 1 ms at the
 * device's IRQL: no thread switch is possible there, bug check 0xB8
 * ATTEMPTED_SWITCH_FROM_DPC.
 *
 * The emulator should print
 *   pewaitirq.sys: SlowIsr, the event was 0, is 0
 *   pewaitirq.sys: wait 0x0 after 200025, state 0   (200000, and 25 from the last update
 *                                                   of the shared page to the OUT)
 *   pewaitirq.sys: wait 0x102
 */
#include <ntddk.h>

static KEVENT done;

BOOLEAN SlowIsr(PKINTERRUPT Interrupt, PVOID Context)
{
    UNREFERENCED_PARAMETER(Interrupt);
    UNREFERENCED_PARAMETER(Context);
    LONG was = KeSetEvent(&done, IO_NO_INCREMENT, FALSE);

    DbgPrint("pewaitirq.sys: SlowIsr, the event was %d, is %d\n", was,
             KeReadStateEvent(&done));
    return TRUE;
}

BOOLEAN WaitingIsr(PKINTERRUPT Interrupt, PVOID Context)
{
    LARGE_INTEGER timeout;

    UNREFERENCED_PARAMETER(Interrupt);
    UNREFERENCED_PARAMETER(Context);
    timeout.QuadPart = 0;
    DbgPrint("pewaitirq.sys: WaitingIsr polls 0x%x\n",
             KeWaitForSingleObject(&done, Executive, KernelMode, FALSE, &timeout));
    timeout.QuadPart = -10000;
    KeWaitForSingleObject(&done, Executive, KernelMode, FALSE, &timeout);
    DbgPrint("pewaitirq.sys: waited at DIRQL?!\n");
    return TRUE;
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    LARGE_INTEGER timeout;
    ULONGLONG before;
    NTSTATUS status;

    UNREFERENCED_PARAMETER(DriverObject);
    UNREFERENCED_PARAMETER(RegistryPath);

    KeInitializeEvent(&done, SynchronizationEvent, FALSE);
    before = KeQueryInterruptTime();
    __outdword(0x300, 1);                       /* START */
    status = KeWaitForSingleObject(&done, Executive, KernelMode, FALSE, NULL);
    DbgPrint("pewaitirq.sys: wait 0x%x after %llu, state %d\n", status,
             KeQueryInterruptTime() - before, KeReadStateEvent(&done));

    timeout.QuadPart = -10000;
    DbgPrint("pewaitirq.sys: wait 0x%x\n",
             KeWaitForSingleObject(&done, Executive, KernelMode, FALSE, &timeout));
    return STATUS_SUCCESS;
}
