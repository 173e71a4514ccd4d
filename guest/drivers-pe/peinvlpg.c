/*
 * peinvlpg.sys: INVLPG at ring 0 (Intel SDM Vol. 2A INVLPG, Vol. 3A 4.10.4.1). INVLPG m
 * drops the TLB's translations of the page of m for the current PCID (and a global one);
 * other PCIDs keep theirs. A non-canonical m is a NOP.
 *
 * DriverEntry reads a page of its own (Probe: nothing else shares its translation), so the
 * page is cached for the System's PCID, and creates \Device\PeInvlpg. Its I/O control
 * requests (METHOD_BUFFERED, no buffers needed) run in the requester's address space,
 * under its PCID:
 *   0x222000 PROBE  reads the page (cached for the requester's PCID too), then INVLPG on it
 *                   (Invalidate, in the image's .text): the requester's translation goes,
 *                   the System's stays.
 *   0x222004 TWIN   reads the page, then INVLPG on its non-canonical twin (the same bits
 *                   47:0, bits 63:48 clear): a NOP, no fault, nothing dropped.
 *   0x222008 POOL   reads the page, then INVLPG on it from a routine copied into
 *                   NonPagedPoolExecute (code written at run time): the same drop.
 */
#include <ntddk.h>

#define IOCTL_PEINVLPG_PROBE CTL_CODE(FILE_DEVICE_UNKNOWN, 0x800, METHOD_BUFFERED, FILE_ANY_ACCESS)
#define IOCTL_PEINVLPG_TWIN  CTL_CODE(FILE_DEVICE_UNKNOWN, 0x801, METHOD_BUFFERED, FILE_ANY_ACCESS)
#define IOCTL_PEINVLPG_POOL  CTL_CODE(FILE_DEVICE_UNKNOWN, 0x802, METHOD_BUFFERED, FILE_ANY_ACCESS)

typedef VOID (*INVALIDATE)(PVOID Address);

/* A page of its own, in .data. */
static __declspec(align(4096)) volatile ULONG64 Probe[512];

/* invlpg [rcx]; ret: the pool routine. */
static const UCHAR PoolInvalidate[] = { 0x0F, 0x01, 0x39, 0xC3 };

/* INVLPG of Address's page: the MSVC intrinsic, or the instruction itself for clang. */
static __declspec(noinline) VOID Invalidate(PVOID Address)
{
#if defined(_MSC_VER) && !defined(__clang__)
    __invlpg(Address);
#else
    __asm__ volatile("invlpg (%0)" : : "r"(Address) : "memory");
#endif
}

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

static NTSTATUS DeviceControl(PDEVICE_OBJECT DeviceObject, PIRP Irp)
{
    PIO_STACK_LOCATION stack = IoGetCurrentIrpStackLocation(Irp);
    ULONG code = stack->Parameters.DeviceIoControl.IoControlCode;
    NTSTATUS status = STATUS_SUCCESS;
    ULONG64 value;
    PUCHAR routine;

    UNREFERENCED_PARAMETER(DeviceObject);
    value = Probe[0];                     /* the read: cached for the requester's PCID */
    switch (code) {
    case IOCTL_PEINVLPG_PROBE:
        Invalidate((PVOID)Probe);
        DbgPrint("peinvlpg.sys: read %llu at %p, then invlpg on it, in process %u\n", value,
                 (PVOID)Probe, (ULONG)(ULONG_PTR)PsGetCurrentProcessId());
        break;
    case IOCTL_PEINVLPG_TWIN:
        Invalidate((PVOID)((ULONG_PTR)Probe & 0x0000FFFFFFFFFFFFull));
        DbgPrint("peinvlpg.sys: read %llu at %p, then invlpg on %p (non-canonical: a NOP)\n",
                 value, (PVOID)Probe, (PVOID)((ULONG_PTR)Probe & 0x0000FFFFFFFFFFFFull));
        break;
    case IOCTL_PEINVLPG_POOL:
        routine = ExAllocatePoolWithTag(NonPagedPoolExecute, sizeof(PoolInvalidate),
                                        0x6C766E49);                  /* 'Invl' */
        if (routine == NULL) {
            status = STATUS_INSUFFICIENT_RESOURCES;
            break;
        }
        RtlCopyMemory(routine, PoolInvalidate, sizeof(PoolInvalidate));
        ((INVALIDATE)routine)((PVOID)Probe);
        DbgPrint("peinvlpg.sys: read %llu at %p, then invlpg on it from pool at %p\n", value,
                 (PVOID)Probe, routine);
        ExFreePoolWithTag(routine, 0x6C766E49);
        break;
    default:
        status = STATUS_INVALID_DEVICE_REQUEST;
        break;
    }
    Irp->IoStatus.Status = status;
    Irp->IoStatus.Information = 0;
    IoCompleteRequest(Irp, IO_NO_INCREMENT);
    return status;
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNICODE_STRING name;
    PDEVICE_OBJECT device;
    NTSTATUS status;

    UNREFERENCED_PARAMETER(RegistryPath);
    Probe[0] = 42;                        /* cached for the System's PCID */
    DbgPrint("peinvlpg.sys: probe page at %p\n", (PVOID)Probe);
    RtlInitUnicodeString(&name, L"\\Device\\PeInvlpg");
    status = IoCreateDevice(DriverObject, 0, &name, FILE_DEVICE_UNKNOWN, 0, FALSE, &device);
    if (!NT_SUCCESS(status))
        return status;
    device->Flags |= DO_BUFFERED_IO;
    DriverObject->MajorFunction[IRP_MJ_CREATE] = CreateClose;
    DriverObject->MajorFunction[IRP_MJ_CLOSE] = CreateClose;
    DriverObject->MajorFunction[IRP_MJ_DEVICE_CONTROL] = DeviceControl;
    return STATUS_SUCCESS;
}
