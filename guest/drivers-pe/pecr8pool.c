/*
 * pecr8pool.sys: CR8 moves in code run from pool. DriverEntry copies a routine's machine
 * code into NonPagedPoolExecute and calls it there: the loader found no CR8 move in it
 * (it was not in the image's code), and the CPU must still make its `mov cr8, rax` set the
 * IRQL and its `mov rax, cr8` read it. A DPC queued at DISPATCH_LEVEL runs when the pool
 * routine lowers the IRQL below it.
 */
#include <ntddk.h>

typedef ULONG64 (*SET_CR8)(ULONG64 NewIrql);

/* mov rax, rcx; mov cr8, rax; mov rax, cr8; ret: sets CR8 and returns what it reads back. */
static const UCHAR SetCr8[] = {
    0x48, 0x89, 0xC8,
    0x44, 0x0F, 0x22, 0xC0,
    0x44, 0x0F, 0x20, 0xC0,
    0xC3,
};

static KDPC Dpc;
static volatile ULONG DpcRuns;

static VOID NTAPI DpcRoutine(PKDPC Object, PVOID Context, PVOID Argument1, PVOID Argument2)
{
    UNREFERENCED_PARAMETER(Object);
    UNREFERENCED_PARAMETER(Context);
    UNREFERENCED_PARAMETER(Argument1);
    UNREFERENCED_PARAMETER(Argument2);
    DpcRuns++;
    DbgPrint("pecr8pool.sys: DPC at IRQL %u\n", KeGetCurrentIrql());
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    PUCHAR code = ExAllocatePoolWithTag(NonPagedPoolExecute, sizeof(SetCr8), 'eDoC');
    SET_CR8 set;
    ULONG64 read;

    UNREFERENCED_PARAMETER(DriverObject);
    UNREFERENCED_PARAMETER(RegistryPath);
    if (code == NULL)
        return STATUS_INSUFFICIENT_RESOURCES;
    RtlCopyMemory(code, SetCr8, sizeof(SetCr8));
    set = (SET_CR8)code;
    KeInitializeDpc(&Dpc, DpcRoutine, NULL);

    read = set(DISPATCH_LEVEL);
    DbgPrint("pecr8pool.sys: the pool routine at %p set CR8 to %u and read %u back\n", code,
             KeGetCurrentIrql(), (ULONG)read);
    KeInsertQueueDpc(&Dpc, NULL, NULL);
    DbgPrint("pecr8pool.sys: DPC queued at IRQL %u, ran %u times\n", KeGetCurrentIrql(),
             DpcRuns);
    read = set(PASSIVE_LEVEL);
    DbgPrint("pecr8pool.sys: the pool routine lowered CR8 to %u (read %u); the DPC ran %u "
             "times\n", KeGetCurrentIrql(), (ULONG)read, DpcRuns);
    ExFreePoolWithTag(code, 'eDoC');
    return STATUS_SUCCESS;
}
