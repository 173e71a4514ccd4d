/*
 * probe.sys: neither I/O done carefully (\Device\Probe). The read dispatch routine
 * runs in the caller's context but still trusts nothing: inside __try, ProbeForWrite
 * checks the caller's address is a writable user address (it raises
 * STATUS_ACCESS_VIOLATION if not), then the copy; __except turns the exception into
 * the request's status, as Microsoft's sioctl sample does. A kernel address from the
 * app (devread \Device\Probe 16 0xffff800000000000) gets STATUS_ACCESS_VIOLATION
 * back; nothing crashes, nothing is overwritten. (neither.sys, which copies blindly,
 * would write that kernel address.)
 */
#include <ntddk.h>

static const char message[] = "data from probe.sys";

/* IRP_MJ_CREATE and IRP_MJ_CLOSE: open and close succeed (a driver without these routines
   cannot be opened: Windows' default MajorFunction entry, IopInvalidDeviceRequest, fails
   the request with STATUS_INVALID_DEVICE_REQUEST). */
static NTSTATUS CreateClose(PDEVICE_OBJECT DeviceObject, PIRP Irp)
{
    UNREFERENCED_PARAMETER(DeviceObject);
    Irp->IoStatus.Status = STATUS_SUCCESS;
    Irp->IoStatus.Information = 0;
    IoCompleteRequest(Irp, IO_NO_INCREMENT);
    return STATUS_SUCCESS;
}

static NTSTATUS Read(PDEVICE_OBJECT DeviceObject, PIRP Irp)
{
    ULONG length = IoGetCurrentIrpStackLocation(Irp)->Parameters.Read.Length;
    ULONG n = length < sizeof(message) ? length : sizeof(message);
    NTSTATUS status = STATUS_SUCCESS;

    UNREFERENCED_PARAMETER(DeviceObject);
    /* clang's SEH for this target is synchronous: the __try covers the calls made in it,
       so the copy is a call too (RtlCopyMemory is memcpy, an import). */
    __try {
        ProbeForWrite(Irp->UserBuffer, length, 1);
        RtlCopyMemory(Irp->UserBuffer, message, n);
    } __except (EXCEPTION_EXECUTE_HANDLER) {
        status = GetExceptionCode();
    }
    DbgPrint("probe.sys: buffer %p: status 0x%08x\n", Irp->UserBuffer, (unsigned)status);
    Irp->IoStatus.Status = status;
    Irp->IoStatus.Information = NT_SUCCESS(status) ? n : 0;
    IoCompleteRequest(Irp, IO_NO_INCREMENT);
    return status;
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNICODE_STRING name;
    PDEVICE_OBJECT device;
    NTSTATUS status;

    UNREFERENCED_PARAMETER(RegistryPath);
    RtlInitUnicodeString(&name, L"\\Device\\Probe");
    status = IoCreateDevice(DriverObject, 0, &name, FILE_DEVICE_UNKNOWN, 0, FALSE, &device);
    if (!NT_SUCCESS(status))
        return status;
    DriverObject->MajorFunction[IRP_MJ_CREATE] = CreateClose;
    DriverObject->MajorFunction[IRP_MJ_CLOSE] = CreateClose;
    DriverObject->MajorFunction[IRP_MJ_READ] = Read;
    return STATUS_SUCCESS;
}
