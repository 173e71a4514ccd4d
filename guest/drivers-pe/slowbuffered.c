/*
 * slowbuffered.sys: the slow device's driver with buffered I/O (\Device\SlowBuffered).
 *
 * A driver for the slow device (ports 0x300-0x30F, interrupt 0x31) that does reads the
 * way real hardware forces drivers to (the seed's four steps):
 *   1. an app asks to read into its buffer;
 *   2. the dispatch routine starts the device and returns STATUS_PENDING;
 *   3. later the device interrupts whatever thread is running, in whatever
 *      process; the ISR queues a DPC (IoRequestDpc), which reads the data;
 *   4. the DPC must not write the app's buffer address: it is only meaningful in
 *      the app's address space. The I/O method decides where the DPC writes:
 *      buffered (a system buffer in pool: right), direct (the app's frames through
 *      the MDL's kernel mapping: right), or neither (the raw user address: wrong,
 *      it lands in whichever process was interrupted).
 * slowbuffered.c, slowdirect.c and slowneither.c differ only in that choice: each
 * compiles alone against <ntddk.h>. wdm.h's inline IoInitializeDpcRequest and macro
 * IoRequestDpc are KeInitializeDpc and KeInsertQueueDpc over DeviceObject->Dpc.
 */
#include <ntddk.h>

#define PORT_COMMAND ((PULONG)0x300)
#define PORT_DATA    ((PULONG)0x304)
#define PORT_STATUS  ((PULONG)0x308)
#define SLOW_VECTOR  0x31

static PIRP pending;                     /* one request at a time */
static PKINTERRUPT interrupt;

static NTSTATUS Complete(PIRP Irp, NTSTATUS Status, ULONG_PTR Information)
{
    Irp->IoStatus.Status = Status;
    Irp->IoStatus.Information = Information;
    IoCompleteRequest(Irp, IO_NO_INCREMENT);
    return Status;
}

/* IRP_MJ_CREATE and IRP_MJ_CLOSE: open and close succeed (a driver without these routines
   cannot be opened: Windows' default MajorFunction entry, IopInvalidDeviceRequest, fails
   the request with STATUS_INVALID_DEVICE_REQUEST). */
static NTSTATUS CreateClose(PDEVICE_OBJECT DeviceObject, PIRP Irp)
{
    UNREFERENCED_PARAMETER(DeviceObject);
    return Complete(Irp, STATUS_SUCCESS, 0);
}

static NTSTATUS Read(PDEVICE_OBJECT DeviceObject, PIRP Irp)
{
    UNREFERENCED_PARAMETER(DeviceObject);
    if (pending != NULL)
        return Complete(Irp, STATUS_UNSUCCESSFUL, 0);
    DbgPrint("slowbuffered.sys: read started by process %llu, buffer %p\n",
             (unsigned long long)(ULONG_PTR)PsGetCurrentProcessId(), Irp->UserBuffer);
    pending = Irp;
    IoMarkIrpPending(Irp);
    WRITE_PORT_ULONG(PORT_COMMAND, 1);   /* START: the device interrupts when done */
    return STATUS_PENDING;
}

static BOOLEAN NTAPI Isr(PKINTERRUPT Interrupt, PVOID Context)
{
    PDEVICE_OBJECT device = Context;

    UNREFERENCED_PARAMETER(Interrupt);
    if (READ_PORT_ULONG(PORT_STATUS) != 2)       /* not ours */
        return FALSE;
    IoRequestDpc(device, pending, NULL);
    return TRUE;
}

static VOID NTAPI DpcForIsr(PKDPC Dpc, PDEVICE_OBJECT DeviceObject, PIRP Irp, PVOID Context)
{
    ULONG length = IoGetCurrentIrpStackLocation(Irp)->Parameters.Read.Length;
    char *target = Irp->AssociatedIrp.SystemBuffer;
    ULONG n = 0;

    UNREFERENCED_PARAMETER(Dpc);
    UNREFERENCED_PARAMETER(DeviceObject);
    UNREFERENCED_PARAMETER(Context);
    DbgPrint("slowbuffered.sys: DPC at IRQL %u in process %llu, writing at %p\n",
             KeGetCurrentIrql(), (unsigned long long)(ULONG_PTR)PsGetCurrentProcessId(),
             target);
    while (n + 4 <= length && n < 28) {
        /* The driver's own store (volatile), in whatever context the DPC runs. */
        *(volatile ULONG *)(target + n) = READ_PORT_ULONG(PORT_DATA);
        n += 4;
    }
    pending = NULL;
    Complete(Irp, STATUS_SUCCESS, n);
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNICODE_STRING name;
    PDEVICE_OBJECT device;
    NTSTATUS status;

    UNREFERENCED_PARAMETER(RegistryPath);
    RtlInitUnicodeString(&name, L"\\Device\\SlowBuffered");
    status = IoCreateDevice(DriverObject, 0, &name, FILE_DEVICE_UNKNOWN, 0, FALSE, &device);
    if (!NT_SUCCESS(status))
        return status;
    device->Flags |= DO_BUFFERED_IO;
    IoInitializeDpcRequest(device, DpcForIsr);
    status = IoConnectInterrupt(&interrupt, Isr, device, NULL, SLOW_VECTOR, 5, 5, Latched,
                                FALSE, 1, FALSE);
    if (!NT_SUCCESS(status))
        return status;
    DriverObject->MajorFunction[IRP_MJ_CREATE] = CreateClose;
    DriverObject->MajorFunction[IRP_MJ_CLOSE] = CreateClose;
    DriverObject->MajorFunction[IRP_MJ_READ] = Read;
    return STATUS_SUCCESS;
}
