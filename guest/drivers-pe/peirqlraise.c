/*
 * peirqlraise.sys: KfRaiseIrql to an IRQL below the current one, through ntoskrnl.exe's
 * export (wdm.h's x64 inline of it does not check): bug check 0x9
 * IRQL_NOT_GREATER_OR_EQUAL (the IRQL asked for, the current IRQL, 0, 0). It includes only
 * the WDK's <ntddk.h>.
 */
#include <ntddk.h>

extern KIRQL (NTAPI *__imp_KfRaiseIrql)(KIRQL NewIrql);

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    KIRQL old;

    UNREFERENCED_PARAMETER(DriverObject);
    UNREFERENCED_PARAMETER(RegistryPath);
    KeRaiseIrql(DISPATCH_LEVEL, &old);
    DbgPrint("peirqlraise.sys: KfRaiseIrql(APC_LEVEL) at IRQL %u\n", KeGetCurrentIrql());
    __imp_KfRaiseIrql(APC_LEVEL);
    KeLowerIrql(old);
    return STATUS_SUCCESS;
}
