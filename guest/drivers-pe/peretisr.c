/*
 * peretisr.sys: an ISR that raises the IRQL above its SynchronizeIrql and returns so.
 * DriverEntry connects it to the slow device (vector 0x31, Irql 5, SynchronizeIrql 5) and
 * starts the device; the interrupt comes while DriverEntry waits, the ISR runs at 5 and
 * returns at 7: bug check 0xC8 IRQL_UNEXPECTED_VALUE ((7 << 16) | (5 << 8) | 3, the ISR,
 * its KINTERRUPT, 0), Microsoft's parameters for an interrupt's ServiceRoutine.
 */
#include <ntddk.h>

#define SLOW_COMMAND ((PULONG)0x300)
#define SLOW_STATUS  ((PULONG)0x308)
#define SLOW_VECTOR  0x31
#define SPINS        100000              /* about 4 instructions each: past the latency */

static PKINTERRUPT Interrupt;
static volatile ULONG IsrRuns;

static BOOLEAN NTAPI Isr(PKINTERRUPT Object, PVOID Context)
{
    KIRQL old;

    UNREFERENCED_PARAMETER(Context);
    if (READ_PORT_ULONG(SLOW_STATUS) != 2)      /* not done: not ours */
        return FALSE;
    IsrRuns++;
    DbgPrint("peretisr.sys: ISR at IRQL %u, its KINTERRUPT %p, raises to 7\n",
             KeGetCurrentIrql(), (PVOID)Object);
    KeRaiseIrql(7, &old);
    return TRUE;
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    NTSTATUS status;
    ULONG i;

    UNREFERENCED_PARAMETER(DriverObject);
    UNREFERENCED_PARAMETER(RegistryPath);
    status = IoConnectInterrupt(&Interrupt, Isr, NULL, NULL, SLOW_VECTOR, 5, 5, Latched,
                                FALSE, 1, FALSE);
    if (!NT_SUCCESS(status))
        return status;
    WRITE_PORT_ULONG(SLOW_COMMAND, 1);          /* START: it interrupts when done */
    for (i = 0; i < SPINS && !IsrRuns; i++)
        ;
    DbgPrint("peretisr.sys: not reached\n");
    return STATUS_SUCCESS;
}
