/*
 * hello.sys: the smallest useful driver. DriverEntry runs at ring 0 and uses
 * the basic kernel routines, through the Microsoft x64 calling convention:
 *
 *   - DbgPrint with a %s argument: a string in the driver's own .rdata;
 *   - ExAllocatePoolWithTag: 64 bytes of NonPagedPool, filled with a message
 *     (RtlFillMemory and RtlCopyMemory: the header's memset and memcpy) that
 *     DbgPrint prints back, with the block's address (%p);
 *   - ExFreePoolWithTag: the block goes back (a bad free would bug-check
 *     0xC2 BAD_POOL_CALLER);
 *   - KeGetCurrentIrql (the header's inline read of CR8) and PsGetCurrentProcessId.
 *
 * The image carries a base relocation (IMAGE_REL_BASED_DIR64) for the pointer
 * `driver_name` (read through a volatile, so the compiler cannot fold it): it
 * holds the address of "hello.sys" and is correct only once the loader has
 * applied the image's relocations at its load address.
 *
 * The emulator should print (%p as 16 upper-case hex digits, in the pool):
 *   hello from ring 0: DriverEntry of hello.sys
 *   pool block at FFFFA000xxxxxxxx: "written at ring 0 into NonPagedPool"
 *   pool block freed
 *   irql 0, process 4
 * and report that DriverEntry returned STATUS_SUCCESS (0x00000000). IRQL is
 * PASSIVE_LEVEL (0); DriverEntry runs in the System process, whose id is 4
 * on Windows as here (PsGetCurrentProcessId).
 */
#include <ntddk.h>

/* 'Helo' as the pool shows it: a tag is four characters stored little-endian. */
#define HELLO_TAG  0x6F6C6548
#define BLOCK_SIZE 64

static const char message[] = "written at ring 0 into NonPagedPool";
_Static_assert(sizeof(message) <= BLOCK_SIZE, "the message fits the pool block");

/* A pointer stored in the image: the loader must relocate it (a DIR64 base relocation). */
static const char *const volatile driver_name = "hello.sys";

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

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNREFERENCED_PARAMETER(RegistryPath);

    DriverObject->MajorFunction[IRP_MJ_CREATE] = CreateClose;
    DriverObject->MajorFunction[IRP_MJ_CLOSE] = CreateClose;
    DbgPrint("hello from ring 0: DriverEntry of %s\n", driver_name);

    char *block = ExAllocatePoolWithTag(NonPagedPool, BLOCK_SIZE, HELLO_TAG);
    if (block == NULL) {
        DbgPrint("ExAllocatePoolWithTag(NonPagedPool, %u) failed\n", BLOCK_SIZE);
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    RtlFillMemory(block, BLOCK_SIZE, '#');
    RtlCopyMemory(block, message, sizeof(message));
    DbgPrint("pool block at %p: \"%s\"\n", (PVOID)block, block);
    ExFreePoolWithTag(block, HELLO_TAG);
    DbgPrint("pool block freed\n");

    DbgPrint("irql %u, process %llu\n", KeGetCurrentIrql(),
             (unsigned long long)(ULONG_PTR)PsGetCurrentProcessId());
    return STATUS_SUCCESS;
}
