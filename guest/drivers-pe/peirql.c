/*
 * peirql.sys: the IRQL is CR8. Written as for Windows: it includes only the WDK's <ntddk.h>,
 * whose x64 KeGetCurrentIrql, KeRaiseIrql and KeLowerIrql are inline CR8 moves
 * (__readcr8/__writecr8), and builds, unchanged, into a PE32+ image Windows would load too.
 *
 * DriverEntry prints the IRQL it runs at (0), raises it to DISPATCH_LEVEL and queues a DPC
 * (KeInsertQueueDpc: TRUE, then FALSE while it is queued), which waits until KeLowerIrql
 * brings the IRQL below DISPATCH_LEVEL and then runs at 2; a DPC removed with
 * KeRemoveQueueDpc never runs; KeAcquireSpinLock raises to 2 and KeReleaseSpinLock lowers
 * back (running a DPC queued while the lock was held); and the same routines called as ntoskrnl.exe's exports (through their import
 * pointers: the header inlines them) read and write the same CR8.
 */
#include <ntddk.h>

/* ntoskrnl.exe exports these too (ntoskrnl.def); wdm.h inlines them on x64, so a driver
 * reaches the exports through their import-table entries. */
extern KIRQL (NTAPI *__imp_KeGetCurrentIrql)(VOID);
extern KIRQL (NTAPI *__imp_KfRaiseIrql)(KIRQL NewIrql);
extern VOID (NTAPI *__imp_KeLowerIrql)(KIRQL NewIrql);
extern KIRQL (NTAPI *__imp_KeRaiseIrqlToDpcLevel)(VOID);

static KDPC Dpc;
static volatile ULONG DpcRuns;
static KSPIN_LOCK Lock;

static VOID NTAPI DpcRoutine(PKDPC Object, PVOID Context, PVOID Argument1, PVOID Argument2)
{
    DpcRuns++;
    DbgPrint("peirql.sys: DPC at IRQL %u, context %s, arguments %p %p, its KDPC %s\n",
             KeGetCurrentIrql(), (const char *)Context, Argument1, Argument2,
             Object == &Dpc ? "yes" : "no");
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    KIRQL old, now;
    BOOLEAN first, second;
    ULONG64 held;

    UNREFERENCED_PARAMETER(DriverObject);
    UNREFERENCED_PARAMETER(RegistryPath);
    DbgPrint("peirql.sys: DriverEntry at IRQL %u\n", KeGetCurrentIrql());

    KeInitializeDpc(&Dpc, DpcRoutine, "dpc-context");
    KeRaiseIrql(DISPATCH_LEVEL, &old);
    now = KeGetCurrentIrql();
    first = KeInsertQueueDpc(&Dpc, (PVOID)0x1111, (PVOID)0x2222);
    second = KeInsertQueueDpc(&Dpc, (PVOID)0x3333, (PVOID)0x4444);
    DbgPrint("peirql.sys: KeRaiseIrql: IRQL %u, was %u; KeInsertQueueDpc %u, again %u; "
             "the DPC ran %u times\n", now, old, first, second, DpcRuns);
    KeLowerIrql(old);
    DbgPrint("peirql.sys: KeLowerIrql: IRQL %u; the DPC ran %u times\n", KeGetCurrentIrql(),
             DpcRuns);

    KeRaiseIrql(DISPATCH_LEVEL, &old);
    KeInsertQueueDpc(&Dpc, NULL, NULL);
    first = KeRemoveQueueDpc(&Dpc);
    second = KeRemoveQueueDpc(&Dpc);
    KeLowerIrql(old);
    DbgPrint("peirql.sys: KeRemoveQueueDpc %u, again %u; the DPC ran %u times\n", first,
             second, DpcRuns);

    KeInitializeSpinLock(&Lock);
    KeAcquireSpinLock(&Lock, &old);
    now = KeGetCurrentIrql();
    held = Lock;
    KeReleaseSpinLock(&Lock, old);
    DbgPrint("peirql.sys: spin lock held at IRQL %u (lock %llu), released at IRQL %u "
             "(lock %llu)\n", now, held, KeGetCurrentIrql(), (ULONG64)Lock);

    KeAcquireSpinLock(&Lock, &old);
    KeInsertQueueDpc(&Dpc, NULL, NULL);
    held = DpcRuns;
    KeReleaseSpinLock(&Lock, old);
    DbgPrint("peirql.sys: a DPC queued under the spin lock ran %u times before "
             "KeReleaseSpinLock, %u after\n", (ULONG)held, DpcRuns);

    old = __imp_KfRaiseIrql(DISPATCH_LEVEL);
    now = __imp_KeGetCurrentIrql();
    __imp_KeLowerIrql(old);
    DbgPrint("peirql.sys: exports: KfRaiseIrql(2) was %u, KeGetCurrentIrql %u, "
             "KeRaiseIrqlToDpcLevel was %u, CR8 %u\n", old, now, __imp_KeRaiseIrqlToDpcLevel(),
             KeGetCurrentIrql());
    __imp_KeLowerIrql(PASSIVE_LEVEL);
    return STATUS_SUCCESS;
}
