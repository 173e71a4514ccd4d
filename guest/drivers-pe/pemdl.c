/*
 * pemdl.sys: MDLs as a Windows driver uses them, written the way Microsoft's WDM IOCTL
 * sample (sioctl.c) is: it includes only the WDK's <ntddk.h>.
 *
 * DriverEntry describes a NonPagedPoolNx buffer with two MDLs: one built with
 * MmBuildMdlForNonPagedPool, one locked with MmProbeAndLockPages and mapped a second time
 * with MmMapLockedPagesSpecifyCache, and prints what it finds (lines "pemdl.sys: ...").
 *
 * Then it serves \Device\Ioctl as ioctl.sys does (guest/apps/ioctl.c asks it to reverse a
 * text): METHOD_BUFFERED through the system buffer, METHOD_OUT_DIRECT through the MDL the
 * I/O manager made (MmGetSystemAddressForMdlSafe), and METHOD_NEITHER as sioctl.c does:
 * the caller's raw buffers described by MDLs of its own (IoAllocateMdl), locked
 * (MmProbeAndLockPages, UserMode), mapped in system space (MmGetSystemAddressForMdlSafe),
 * then unlocked (MmUnlockPages) and freed (IoFreeMdl). Without __try/__except a bad
 * buffer is bug check 0x1E, as on Windows with no handler. IRP_MJ_CREATE prints who asked:
 * "pemdl.sys: opened by process N, 32-bit 0|1 (current process: 0|1)".
 */
#include <ntddk.h>

#ifndef MdlMappingNoExecute
#define MdlMappingNoExecute 0x40000000       /* wdm.h, Windows 8; newer than mingw's */
#endif

#define IOCTL_REVERSE_BUFFERED CTL_CODE(FILE_DEVICE_UNKNOWN, 0x800, METHOD_BUFFERED, FILE_ANY_ACCESS)
#define IOCTL_REVERSE_DIRECT   CTL_CODE(FILE_DEVICE_UNKNOWN, 0x801, METHOD_OUT_DIRECT, FILE_ANY_ACCESS)
#define IOCTL_REVERSE_NEITHER  CTL_CODE(FILE_DEVICE_UNKNOWN, 0x802, METHOD_NEITHER, FILE_ANY_ACCESS)

NTKERNELAPI ULONG NTAPI IoGetRequestorProcessId(PIRP Irp);    /* ntifs.h */

static void Reverse(volatile char *out, const volatile char *in, ULONG n)
{
    for (ULONG i = 0; i < n; i++)
        out[i] = in[n - 1 - i];
}

static NTSTATUS Complete(PIRP Irp, NTSTATUS Status, ULONG_PTR Information)
{
    Irp->IoStatus.Status = Status;
    Irp->IoStatus.Information = Information;
    IoCompleteRequest(Irp, IO_NO_INCREMENT);
    return Status;
}

static NTSTATUS CreateClose(PDEVICE_OBJECT DeviceObject, PIRP Irp)
{
    UNREFERENCED_PARAMETER(DeviceObject);
    if (IoGetCurrentIrpStackLocation(Irp)->MajorFunction == IRP_MJ_CREATE)
        DbgPrint("pemdl.sys: opened by process %u, 32-bit %d (current process: %d)\n",
                 IoGetRequestorProcessId(Irp), IoIs32bitProcess(Irp), IoIs32bitProcess(NULL));
    return Complete(Irp, STATUS_SUCCESS, 0);
}

/* METHOD_NEITHER, as sioctl.c does it: an MDL for each raw user buffer. */
static NTSTATUS Neither(PIRP Irp, PIO_STACK_LOCATION Stack, ULONG n)
{
    PMDL in, out;
    char *source, *target;

    in = IoAllocateMdl(Stack->Parameters.DeviceIoControl.Type3InputBuffer, n, FALSE, TRUE,
                       NULL);
    out = IoAllocateMdl(Irp->UserBuffer, n, FALSE, TRUE, NULL);
    if (!in || !out) {
        if (in)
            IoFreeMdl(in);
        if (out)
            IoFreeMdl(out);
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    MmProbeAndLockPages(in, UserMode, IoReadAccess);
    MmProbeAndLockPages(out, UserMode, IoWriteAccess);
    source = MmGetSystemAddressForMdlSafe(in, NormalPagePriority | MdlMappingNoExecute);
    target = MmGetSystemAddressForMdlSafe(out, NormalPagePriority | MdlMappingNoExecute);
    DbgPrint("pemdl.sys: neither: output frame %llx, its physical address %llx\n",
             (ULONG64)MmGetMdlPfnArray(out)[0],
             (ULONG64)MmGetPhysicalAddress(Irp->UserBuffer).QuadPart);
    if (source && target)
        Reverse(target, source, n);
    MmUnlockPages(in);                /* unmaps the system view too */
    MmUnlockPages(out);
    IoFreeMdl(in);
    IoFreeMdl(out);
    return source && target ? STATUS_SUCCESS : STATUS_INSUFFICIENT_RESOURCES;
}

static NTSTATUS DeviceControl(PDEVICE_OBJECT DeviceObject, PIRP Irp)
{
    PIO_STACK_LOCATION stack = IoGetCurrentIrpStackLocation(Irp);
    ULONG in = stack->Parameters.DeviceIoControl.InputBufferLength;
    ULONG out = stack->Parameters.DeviceIoControl.OutputBufferLength;
    ULONG n = in < out ? in : out;
    volatile char work[64];
    char *target;
    NTSTATUS status;

    UNREFERENCED_PARAMETER(DeviceObject);
    if (n > sizeof(work))
        n = sizeof(work);
    switch (stack->Parameters.DeviceIoControl.IoControlCode) {
    case IOCTL_REVERSE_BUFFERED:                   /* in and out: the same system buffer */
        for (ULONG i = 0; i < n; i++)
            work[i] = ((char *)Irp->AssociatedIrp.SystemBuffer)[i];
        Reverse(Irp->AssociatedIrp.SystemBuffer, work, n);
        return Complete(Irp, STATUS_SUCCESS, n);
    case IOCTL_REVERSE_DIRECT:                     /* out: the I/O manager's MDL */
        target = MmGetSystemAddressForMdlSafe(Irp->MdlAddress,
                                              NormalPagePriority | MdlMappingNoExecute);
        if (!target)
            return Complete(Irp, STATUS_INSUFFICIENT_RESOURCES, 0);
        Reverse(target, Irp->AssociatedIrp.SystemBuffer, n);
        return Complete(Irp, STATUS_SUCCESS, n);
    case IOCTL_REVERSE_NEITHER:
        status = Neither(Irp, stack, n);
        return Complete(Irp, status, NT_SUCCESS(status) ? n : 0);
    default:
        return Complete(Irp, STATUS_INVALID_DEVICE_REQUEST, 0);
    }
}

static VOID Unload(PDRIVER_OBJECT DriverObject)
{
    IoDeleteDevice(DriverObject->DeviceObject);
}

/* Two MDLs over one NonPagedPoolNx buffer that spans three pages. */
static void SelfTest(void)
{
    char *block = ExAllocatePoolWithTag(NonPagedPoolNx, 0x3000, 'lDMe');
    char *buffer = block + 0x10, *view;
    PMDL built, locked;
    ULONG64 pa;

    for (ULONG i = 0; i < 0x2000; i++)
        buffer[i] = (char)i;
    built = IoAllocateMdl(buffer, 0x2000, FALSE, FALSE, NULL);
    DbgPrint("pemdl.sys: IoAllocateMdl: va ok %d, byte count %x, byte offset %x, size %x, "
             "flags %x\n", MmGetMdlVirtualAddress(built) == buffer, MmGetMdlByteCount(built),
             MmGetMdlByteOffset(built), built->Size, built->MdlFlags);
    MmBuildMdlForNonPagedPool(built);
    pa = MmGetPhysicalAddress(buffer).QuadPart;
    DbgPrint("pemdl.sys: MmBuildMdlForNonPagedPool: flags %x, frame ok %d, system address is "
             "the buffer %d\n", built->MdlFlags, MmGetMdlPfnArray(built)[0] == pa >> PAGE_SHIFT,
             MmGetSystemAddressForMdlSafe(built, NormalPagePriority) == buffer);

    locked = IoAllocateMdl(buffer, 0x2000, FALSE, FALSE, NULL);
    MmProbeAndLockPages(locked, KernelMode, IoModifyAccess);
    view = MmMapLockedPagesSpecifyCache(locked, KernelMode, MmCached, NULL, FALSE,
                                        NormalPagePriority | MdlMappingNoExecute);
    view[0x1000] = 'V';                   /* written through the second view */
    DbgPrint("pemdl.sys: mapped: flags %x, a second address %d, same frame %d, "
             "shared byte %c, valid %d\n", locked->MdlFlags, view != buffer,
             MmGetPhysicalAddress(view).QuadPart == pa, buffer[0x1000],
             MmIsAddressValid(view));
    MmUnmapLockedPages(view, locked);
    DbgPrint("pemdl.sys: unmapped: flags %x, valid %d\n", locked->MdlFlags,
             MmIsAddressValid(view));
    MmUnlockPages(locked);
    DbgPrint("pemdl.sys: unlocked: flags %x; NULL valid %d\n", locked->MdlFlags,
             MmIsAddressValid(NULL));
    IoFreeMdl(locked);
    IoFreeMdl(built);
    ExFreePoolWithTag(block, 'lDMe');
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNICODE_STRING name;
    PDEVICE_OBJECT device;
    NTSTATUS status;

    UNREFERENCED_PARAMETER(RegistryPath);
    SelfTest();
    RtlInitUnicodeString(&name, L"\\Device\\Ioctl");
    status = IoCreateDevice(DriverObject, 0, &name, FILE_DEVICE_UNKNOWN, 0, FALSE, &device);
    if (!NT_SUCCESS(status))
        return status;
    DriverObject->MajorFunction[IRP_MJ_CREATE] = CreateClose;
    DriverObject->MajorFunction[IRP_MJ_CLOSE] = CreateClose;
    DriverObject->MajorFunction[IRP_MJ_DEVICE_CONTROL] = DeviceControl;
    DriverObject->DriverUnload = Unload;
    return STATUS_SUCCESS;
}
