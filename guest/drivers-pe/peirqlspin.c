/*
 * peirqlspin.sys: a spin lock acquired twice by the one processor. On a single CPU the
 * second KeAcquireSpinLock would spin forever; the machine stops with bug check 0xF
 * SPIN_LOCK_ALREADY_OWNED, as Windows' checked kernel does. It includes only the WDK's
 * <ntddk.h>.
 */
#include <ntddk.h>

static KSPIN_LOCK Lock;

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    KIRQL first, second;

    UNREFERENCED_PARAMETER(DriverObject);
    UNREFERENCED_PARAMETER(RegistryPath);
    KeInitializeSpinLock(&Lock);
    KeAcquireSpinLock(&Lock, &first);
    DbgPrint("peirqlspin.sys: lock %p held at IRQL %u, acquiring it again\n", &Lock,
             KeGetCurrentIrql());
    KeAcquireSpinLock(&Lock, &second);
    KeReleaseSpinLock(&Lock, second);
    KeReleaseSpinLock(&Lock, first);
    return STATUS_SUCCESS;
}
