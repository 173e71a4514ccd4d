/*
 * peretdpc.sys: a DPC routine that lowers the IRQL to PASSIVE_LEVEL (KeLowerIrql: a
 * `mov cr8`) and returns so. The kernel runs DPCs at DISPATCH_LEVEL and checks the IRQL
 * when each returns: bug check 0x9 IRQL_NOT_GREATER_OR_EQUAL (the DPC routine, 0, 2, 0).
 */
#include <ntddk.h>

static KDPC Dpc;

static VOID NTAPI DpcRoutine(PKDPC Object, PVOID Context, PVOID Argument1, PVOID Argument2)
{
    UNREFERENCED_PARAMETER(Object);
    UNREFERENCED_PARAMETER(Context);
    UNREFERENCED_PARAMETER(Argument1);
    UNREFERENCED_PARAMETER(Argument2);
    DbgPrint("peretdpc.sys: DPC at IRQL %u lowers it to 0\n", KeGetCurrentIrql());
    KeLowerIrql(PASSIVE_LEVEL);
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNREFERENCED_PARAMETER(DriverObject);
    UNREFERENCED_PARAMETER(RegistryPath);
    KeInitializeDpc(&Dpc, DpcRoutine, NULL);
    KeInsertQueueDpc(&Dpc, NULL, NULL);         /* below DISPATCH_LEVEL: it runs at once */
    DbgPrint("peretdpc.sys: not reached\n");
    return STATUS_SUCCESS;
}
