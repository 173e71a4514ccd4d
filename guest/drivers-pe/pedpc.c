/*
 * pedpc.sys: the slow device's driver written as for Windows, the seed's four steps with a
 * DPC for the ISR. It includes only the WDK's <ntddk.h> and builds, unchanged, into a
 * PE32+ image; wdm.h's inline IoInitializeDpcRequest and macro IoRequestDpc are
 * KeInitializeDpc and KeInsertQueueDpc over DeviceObject->Dpc.
 *
 * DriverEntry creates \Device\PeDpc (buffered I/O), IoInitializeDpcRequest(device,
 * DpcForIsr), and IoConnectInterrupt(vector 0x31, Irql 5, SynchronizeIrql 5). IRP_MJ_READ
 * starts the device (OUT to port 0x300) and pends the IRP. The interrupt comes later, in
 * whatever thread runs then: the ISR prints its IRQL (5) and IoRequestDpc(device, Irp,
 * NULL); the DPC, at DISPATCH_LEVEL, prints its IRQL (2), reads the data from port 0x304
 * into the IRP's system buffer and completes the IRP; the I/O manager copies it to the
 * requester in its own context.
 *
 *   emu run --driver pedpc.sys slowread '\Device\PeDpc' -- victim
 */
#include <ntddk.h>

#define SLOW_COMMAND ((PULONG)0x300)
#define SLOW_DATA    ((PULONG)0x304)
#define SLOW_STATUS  ((PULONG)0x308)
#define SLOW_VECTOR  0x31

static PKINTERRUPT Interrupt;
static PIRP Pending;                     /* one request at a time */

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
    return Complete(Irp, STATUS_SUCCESS, 0);
}

static NTSTATUS Read(PDEVICE_OBJECT DeviceObject, PIRP Irp)
{
    UNREFERENCED_PARAMETER(DeviceObject);
    if (Pending != NULL)
        return Complete(Irp, STATUS_DEVICE_BUSY, 0);
    DbgPrint("pedpc.sys: read started at IRQL %u\n", KeGetCurrentIrql());
    Pending = Irp;
    IoMarkIrpPending(Irp);
    WRITE_PORT_ULONG(SLOW_COMMAND, 1);  /* START: the device interrupts when done */
    return STATUS_PENDING;
}

static BOOLEAN NTAPI Isr(PKINTERRUPT Object, PVOID Context)
{
    PDEVICE_OBJECT device = Context;

    UNREFERENCED_PARAMETER(Object);
    if (READ_PORT_ULONG(SLOW_STATUS) != 2)      /* not done: not ours */
        return FALSE;
    DbgPrint("pedpc.sys: ISR at IRQL %u\n", KeGetCurrentIrql());
    IoRequestDpc(device, Pending, NULL);
    return TRUE;
}

static VOID NTAPI DpcForIsr(PKDPC Dpc, PDEVICE_OBJECT DeviceObject, PIRP Irp, PVOID Context)
{
    ULONG length = IoGetCurrentIrpStackLocation(Irp)->Parameters.Read.Length;
    volatile ULONG *out = Irp->AssociatedIrp.SystemBuffer;
    ULONG n = 0;

    UNREFERENCED_PARAMETER(Context);
    DbgPrint("pedpc.sys: DPC at IRQL %u, for its device %s, the IRP %s\n", KeGetCurrentIrql(),
             Dpc == &DeviceObject->Dpc ? "yes" : "no", Irp == Pending ? "yes" : "no");
    while (n + 4 <= length && n < 28) {
        out[n / 4] = READ_PORT_ULONG(SLOW_DATA);
        n += 4;
    }
    Pending = NULL;
    Complete(Irp, STATUS_SUCCESS, n);
}

static VOID Unload(PDRIVER_OBJECT DriverObject)
{
    IoDisconnectInterrupt(Interrupt);
    IoDeleteDevice(DriverObject->DeviceObject);
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNICODE_STRING name;
    PDEVICE_OBJECT device;
    NTSTATUS status;

    UNREFERENCED_PARAMETER(RegistryPath);
    RtlInitUnicodeString(&name, L"\\Device\\PeDpc");
    status = IoCreateDevice(DriverObject, 0, &name, FILE_DEVICE_UNKNOWN, 0, FALSE, &device);
    if (!NT_SUCCESS(status))
        return status;
    device->Flags |= DO_BUFFERED_IO;
    IoInitializeDpcRequest(device, DpcForIsr);
    status = IoConnectInterrupt(&Interrupt, Isr, device, NULL, SLOW_VECTOR, 5, 5, Latched,
                                FALSE, 1, FALSE);
    if (!NT_SUCCESS(status)) {
        IoDeleteDevice(device);
        return status;
    }
    DriverObject->MajorFunction[IRP_MJ_CREATE] = CreateClose;
    DriverObject->MajorFunction[IRP_MJ_CLOSE] = CreateClose;
    DriverObject->MajorFunction[IRP_MJ_READ] = Read;
    DriverObject->DriverUnload = Unload;
    return STATUS_SUCCESS;
}
