/*
 * peirqlisr.sys: an interrupt masked by the IRQL (CR8), as on Windows. It includes only the
 * WDK's <ntddk.h> and builds, unchanged, into a PE32+ image.
 *
 * DriverEntry connects an ISR to the slow device (vector 0x31, ports 0x300-0x30F) with
 * IoConnectInterrupt(Irql 5, SynchronizeIrql 6), raises the IRQL to 5 by KeRaiseIrql (a
 * `mov cr8`), starts the device and spins long past the device's latency: the interrupt
 * stays pending, since its DIRQL is not above the IRQL. KeLowerIrql(4) lets it in: the ISR
 * runs at once, at 6 (its SynchronizeIrql), and queues a DPC, which waits while the IRQL is
 * 4; KeLowerIrql(PASSIVE_LEVEL) runs the DPC, at 2. Then IoDisconnectInterrupt.
 */
#include <ntddk.h>

#define SLOW_COMMAND ((PULONG)0x300)
#define SLOW_STATUS  ((PULONG)0x308)
#define SLOW_VECTOR  0x31
#define SPINS        100000              /* about 4 instructions each: past the latency */

static PKINTERRUPT Interrupt;
static KDPC Dpc;
static volatile ULONG IsrRuns, DpcRuns;

static BOOLEAN NTAPI Isr(PKINTERRUPT Object, PVOID Context)
{
    if (READ_PORT_ULONG(SLOW_STATUS) != 2)      /* not done: not ours */
        return FALSE;
    IsrRuns++;
    DbgPrint("peirqlisr.sys: ISR at IRQL %u, context %s, its KINTERRUPT %s\n",
             KeGetCurrentIrql(), (const char *)Context, Object == Interrupt ? "yes" : "no");
    KeInsertQueueDpc(&Dpc, NULL, NULL);
    return TRUE;
}

static VOID NTAPI DpcRoutine(PKDPC Object, PVOID Context, PVOID Argument1, PVOID Argument2)
{
    UNREFERENCED_PARAMETER(Object);
    UNREFERENCED_PARAMETER(Context);
    UNREFERENCED_PARAMETER(Argument1);
    UNREFERENCED_PARAMETER(Argument2);
    DpcRuns++;
    DbgPrint("peirqlisr.sys: DPC at IRQL %u\n", KeGetCurrentIrql());
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    static char context[] = "isr-context";
    NTSTATUS status;
    KIRQL old;
    ULONG i;

    UNREFERENCED_PARAMETER(DriverObject);
    UNREFERENCED_PARAMETER(RegistryPath);
    KeInitializeDpc(&Dpc, DpcRoutine, NULL);
    status = IoConnectInterrupt(&Interrupt, Isr, context, NULL, SLOW_VECTOR, 5, 6, Latched,
                                FALSE, 1, FALSE);
    DbgPrint("peirqlisr.sys: IoConnectInterrupt 0x%08x\n", status);
    if (!NT_SUCCESS(status))
        return status;
    KeRaiseIrql(5, &old);
    WRITE_PORT_ULONG(SLOW_COMMAND, 1);          /* START: it interrupts when done */
    for (i = 0; i < SPINS && !IsrRuns; i++)
        ;
    DbgPrint("peirqlisr.sys: at IRQL %u the ISR ran %u times in %u spins\n",
             KeGetCurrentIrql(), IsrRuns, i);
    KeLowerIrql(4);
    DbgPrint("peirqlisr.sys: at IRQL %u the ISR ran %u times, the DPC %u times\n",
             KeGetCurrentIrql(), IsrRuns, DpcRuns);
    KeLowerIrql(old);
    DbgPrint("peirqlisr.sys: at IRQL %u the DPC ran %u times\n", KeGetCurrentIrql(), DpcRuns);
    IoDisconnectInterrupt(Interrupt);
    return STATUS_SUCCESS;
}
