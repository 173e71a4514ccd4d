/*
 * What every device driver here does the same way: create one named device with
 * its I/O method flags, and complete a request with a status and a byte count.
 */
#ifndef GUEST_DRIVERS_DEVICE_H
#define GUEST_DRIVERS_DEVICE_H

#include <ddk/ntddk.h>

/* IoCreateDevice for \Device\<name>, with DO_BUFFERED_IO / DO_DIRECT_IO / 0 (neither). */
static inline NTSTATUS CreateNamedDevice(PDRIVER_OBJECT DriverObject, PCWSTR Name, ULONG Flags,
                                         PDEVICE_OBJECT *Device)
{
    UNICODE_STRING name;
    NTSTATUS status;

    RtlInitUnicodeString(&name, Name);
    status = IoCreateDevice(DriverObject, 0, &name, FILE_DEVICE_UNKNOWN, 0, 0, Device);
    if (NT_SUCCESS(status))
        (*Device)->Flags |= Flags;
    return status;
}

/* Irp->IoStatus = (Status, Information), then IoCompleteRequest; returns Status. */
static inline NTSTATUS CompleteRequest(PIRP Irp, NTSTATUS Status, ULONG_PTR Information)
{
    Irp->IoStatus.Status = Status;
    Irp->IoStatus.Information = Information;
    IoCompleteRequest(Irp, IO_NO_INCREMENT);
    return Status;
}

#endif /* GUEST_DRIVERS_DEVICE_H */
