/*
 * pewaitio.sys: a dispatch routine that waits for its device, in the
 * requesting thread's context. IRP_MJ_READ on \Device\PeWait (buffered I/O;
 * the link \DosDevices\PeWait) starts the slow device and waits, with no
 * timeout, on a synchronization event that the device's ISR, SlowIsr, sets
 * (the driver does not call IoConnectInterrupt itself: a test connects SlowIsr).
 * The interrupt is taken while the driver waits, in the requester's address
 * space, on its kernel stack below the waiting routine's frames; then the read
 * returns "woken by the device" (memcpy) and the I/O manager copies it to the
 * caller.
 *
 *   devread '\??\PeWait'   ->   status 0x00000000, read 19 bytes, data: woken by the device
 *   DbgPrint: pewaitio.sys: Read waited 0x0 for 200000 + the instructions the
 *   routine ran before its OUT (counted when other threads are ready)
 */
#include <ntddk.h>

static const char message[] = "woken by the device";
static KEVENT done;

BOOLEAN SlowIsr(PKINTERRUPT Interrupt, PVOID Context)
{
    UNREFERENCED_PARAMETER(Interrupt);
    UNREFERENCED_PARAMETER(Context);
    KeSetEvent(&done, IO_NO_INCREMENT, FALSE);
    return TRUE;
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
    return Complete(Irp, STATUS_SUCCESS, 0);
}

static NTSTATUS Read(PDEVICE_OBJECT DeviceObject, PIRP Irp)
{
    ULONG n = IoGetCurrentIrpStackLocation(Irp)->Parameters.Read.Length;
    ULONGLONG before = KeQueryInterruptTime();
    NTSTATUS status;

    UNREFERENCED_PARAMETER(DeviceObject);
    __outdword(0x300, 1);                       /* START */
    status = KeWaitForSingleObject(&done, Executive, KernelMode, FALSE, NULL);
    DbgPrint("pewaitio.sys: Read waited 0x%x for %llu\n", status,
             KeQueryInterruptTime() - before);
    if (n > sizeof(message) - 1)
        n = sizeof(message) - 1;
    memcpy(Irp->AssociatedIrp.SystemBuffer, message, n);
    return Complete(Irp, STATUS_SUCCESS, n);
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNICODE_STRING name, link;
    PDEVICE_OBJECT device;
    NTSTATUS status;

    UNREFERENCED_PARAMETER(RegistryPath);
    KeInitializeEvent(&done, SynchronizationEvent, FALSE);
    RtlInitUnicodeString(&name, L"\\Device\\PeWait");
    status = IoCreateDevice(DriverObject, 0, &name, FILE_DEVICE_UNKNOWN, 0, FALSE, &device);
    if (!NT_SUCCESS(status))
        return status;
    device->Flags |= DO_BUFFERED_IO;
    RtlInitUnicodeString(&link, L"\\DosDevices\\PeWait");
    status = IoCreateSymbolicLink(&link, &name);
    if (!NT_SUCCESS(status)) {
        IoDeleteDevice(device);
        return status;
    }
    DriverObject->MajorFunction[IRP_MJ_CREATE] = CreateClose;
    DriverObject->MajorFunction[IRP_MJ_CLOSE] = CreateClose;
    DriverObject->MajorFunction[IRP_MJ_READ] = Read;
    return STATUS_SUCCESS;
}
