/*
 * pekpcr.sys: the KPCR through GS, as x64 kernel code finds it. wdm.h inlines
 * KeGetCurrentThread (and PsGetCurrentThread) as __readgsqword(0x188), the KPRCB's
 * CurrentThread; ntddk.h inlines KeGetPcr as __readgsqword(0x18), the KPCR's Self, and
 * KeGetCurrentProcessorNumber as __readgsword(0x184). Each line compares the inlines with
 * the exports of the same routines and with what the I/O manager hands the driver.
 *
 * DriverEntry and DriverUnload run in the System thread; IRP_MJ_CREATE runs in the thread
 * that opened \Device\PeKpcr, the one Irp->Tail.Overlay.Thread names; a DPC queued at
 * PASSIVE_LEVEL runs at once, in the thread that queued it.
 */
#include <ntddk.h>

/* Declared in ntifs.h, not ntddk.h; exported by ntoskrnl.exe (and in its import library). */
NTKERNELAPI BOOLEAN NTAPI PsIsSystemThread(PETHREAD Thread);
/* The exports behind the inlines, through their import pointers. */
extern PKTHREAD (NTAPI *__imp_KeGetCurrentThread)(VOID);
extern PETHREAD (NTAPI *__imp_PsGetCurrentThread)(VOID);

static KDPC Dpc;

static void Where(PCSTR When)
{
    PETHREAD thread = PsGetCurrentThread();        /* gs:[0x188] */

    DbgPrint("pekpcr.sys: %s: thread %u of process %u, system thread %d, "
             "KeGetCurrentThread same %d, exports same %d %d\n", When,
             (ULONG)(ULONG_PTR)PsGetThreadId(thread),
             (ULONG)(ULONG_PTR)PsGetThreadProcessId(thread), PsIsSystemThread(thread),
             (PVOID)KeGetCurrentThread() == (PVOID)thread,
             (PVOID)__imp_KeGetCurrentThread() == (PVOID)thread,
             (PVOID)__imp_PsGetCurrentThread() == (PVOID)thread);
}

static VOID DpcRoutine(PKDPC Dpc, PVOID Context, PVOID Argument1, PVOID Argument2)
{
    UNREFERENCED_PARAMETER(Dpc);
    UNREFERENCED_PARAMETER(Context);
    UNREFERENCED_PARAMETER(Argument1);
    UNREFERENCED_PARAMETER(Argument2);
    Where("DPC");
}

static NTSTATUS Create(PDEVICE_OBJECT DeviceObject, PIRP Irp)
{
    UNREFERENCED_PARAMETER(DeviceObject);
    Where("IRP_MJ_CREATE");
    /* SWAPGS on the way in: GS's base is the KPCR, IA32_KERNEL_GS_BASE the app's own. */
    DbgPrint("pekpcr.sys: IA32_GS_BASE %p, IA32_KERNEL_GS_BASE %p\n",
             (PVOID)__readmsr(0xC0000101), (PVOID)__readmsr(0xC0000102));
    DbgPrint("pekpcr.sys: Irp->Tail.Overlay.Thread same %d\n",
             Irp->Tail.Overlay.Thread == PsGetCurrentThread());
    Irp->IoStatus.Status = STATUS_SUCCESS;
    Irp->IoStatus.Information = 0;
    IoCompleteRequest(Irp, IO_NO_INCREMENT);
    return STATUS_SUCCESS;
}

static NTSTATUS Close(PDEVICE_OBJECT DeviceObject, PIRP Irp)
{
    UNREFERENCED_PARAMETER(DeviceObject);
    Irp->IoStatus.Status = STATUS_SUCCESS;
    Irp->IoStatus.Information = 0;
    IoCompleteRequest(Irp, IO_NO_INCREMENT);
    return STATUS_SUCCESS;
}

static VOID Unload(PDRIVER_OBJECT DriverObject)
{
    Where("DriverUnload");
    IoDeleteDevice(DriverObject->DeviceObject);
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    PKPCR pcr = KeGetPcr();                        /* gs:[0x18] */
    PROCESSOR_NUMBER number = {0xFFFF, 0xFF, 0xFF};
    UNICODE_STRING name;
    PDEVICE_OBJECT device;
    ULONG index;
    NTSTATUS status;

    UNREFERENCED_PARAMETER(RegistryPath);
    index = KeGetCurrentProcessorNumberEx(&number);
    DbgPrint("pekpcr.sys: KPCR %p, Self %p, CurrentPrcb %p, version %u.%u\n", pcr, pcr->Self,
             pcr->CurrentPrcb, pcr->MajorVersion, pcr->MinorVersion);
    DbgPrint("pekpcr.sys: processor %u, Ex %u (group %u number %u)\n",
             KeGetCurrentProcessorNumber(), index, number.Group, number.Number);
    Where("DriverEntry");
    KeInitializeDpc(&Dpc, DpcRoutine, NULL);
    KeInsertQueueDpc(&Dpc, NULL, NULL);

    RtlInitUnicodeString(&name, L"\\Device\\PeKpcr");
    status = IoCreateDevice(DriverObject, 0, &name, FILE_DEVICE_UNKNOWN, 0, FALSE, &device);
    if (!NT_SUCCESS(status))
        return status;
    DriverObject->MajorFunction[IRP_MJ_CREATE] = Create;
    DriverObject->MajorFunction[IRP_MJ_CLOSE] = Close;
    DriverObject->DriverUnload = Unload;
    return STATUS_SUCCESS;
}
