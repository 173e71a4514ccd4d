/*
 * The body shared by slowbuffered.sys, slowdirect.sys and slowneither.sys: a driver
 * for the slow device (ports 0x300-0x30F, interrupt 0x31) that does reads the
 * way real hardware forces drivers to (the seed's four steps):
 *   1. an app asks to read into its buffer;
 *   2. the dispatch routine starts the device and returns STATUS_PENDING;
 *   3. later the device interrupts whatever thread is running, in whatever
 *      process; the ISR queues a DPC, which reads the data;
 *   4. the DPC must not write the app's buffer address: it is only meaningful in
 *      the app's address space. SLOW_METHOD decides where the DPC writes:
 *      buffered (a system buffer in pool: right), direct (the app's frames through
 *      the MDL's kernel mapping: right), or neither (the raw user address: wrong,
 *      it lands in whichever process was interrupted).
 */
#include "device.h"

#define PORT_COMMAND 0x300
#define PORT_DATA    0x304
#define PORT_STATUS  0x308
#define SLOW_VECTOR  0x31

static PIRP pending;                     /* one request at a time */
static PKINTERRUPT interrupt;

static NTSTATUS NTAPI Read(PDEVICE_OBJECT DeviceObject, PIRP Irp)
{
    (void)DeviceObject;
    if (pending != 0) {
        return CompleteRequest(Irp, STATUS_UNSUCCESSFUL, 0);
    }
    DbgPrint(SLOW_NAME ": read started by process %llu, buffer %p\n",
             (unsigned long long)(ULONG_PTR)PsGetCurrentProcessId(), Irp->UserBuffer);
    pending = Irp;
    IoMarkIrpPending(Irp);
    WRITE_PORT_ULONG(PORT_COMMAND, 1);   /* START: the device interrupts when done */
    return STATUS_PENDING;
}

static BOOLEAN NTAPI Isr(PKINTERRUPT Interrupt, PVOID Context)
{
    PDEVICE_OBJECT device = Context;

    (void)Interrupt;
    if (READ_PORT_ULONG(PORT_STATUS) != 2)       /* not ours */
        return 0;
    IoRequestDpc(device, pending, 0);
    return 1;
}

static VOID NTAPI DpcForIsr(PKDPC Dpc, PDEVICE_OBJECT DeviceObject, PIRP Irp, PVOID Context)
{
    ULONG length = IoGetCurrentIrpStackLocation(Irp)->Parameters.Read.Length;
    char *target = SLOW_TARGET(Irp);
    ULONG n = 0;

    (void)Dpc, (void)DeviceObject, (void)Context;
    DbgPrint(SLOW_NAME ": DPC at IRQL %u in process %llu, writing at %p\n",
             KeGetCurrentIrql(), (unsigned long long)(ULONG_PTR)PsGetCurrentProcessId(),
             target);
    while (n + 4 <= length && n < 28) {
        ULONG word = READ_PORT_ULONG(PORT_DATA);
        RtlCopyMemory(target + n, &word, 4);
        n += 4;
    }
    pending = 0;
    Irp->IoStatus.Status = STATUS_SUCCESS;
    Irp->IoStatus.Information = n;
    IoCompleteRequest(Irp, IO_NO_INCREMENT);
}

NTSTATUS NTAPI DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    PDEVICE_OBJECT device;
    NTSTATUS status = CreateNamedDevice(DriverObject, SLOW_DEVICE, SLOW_FLAGS, &device);

    (void)RegistryPath;
    if (!NT_SUCCESS(status))
        return status;
    IoInitializeDpcRequest(device, DpcForIsr);
    status = IoConnectInterrupt(&interrupt, Isr, device, 0, SLOW_VECTOR, 5, 5, 0, 0, 1, 0);
    if (!NT_SUCCESS(status))
        return status;
    DriverObject->MajorFunction[IRP_MJ_READ] = Read;
    return STATUS_SUCCESS;
}
