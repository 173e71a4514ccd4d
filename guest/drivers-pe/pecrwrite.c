/*
 * pecrwrite.sys: MOV to CR0, CR3 and CR4 at ring 0 (Intel SDM Vol. 2B "MOV - Move to/from
 * Control Registers", Vol. 3A 2.5 and 4.10.4.1), the moves a driver (or an exploit) makes:
 * clear CR0.WP to write a read-only page, reload CR3 to flush the TLB, set a reserved CR4
 * bit.
 *
 * DriverEntry reads its Probe page (cached for the System's PCID) and creates
 * \Device\PeCrWrite. Its I/O control requests (METHOD_BUFFERED, no buffers needed) run in
 * the requester's address space, under its PCID, and read Probe first (cached for that
 * PCID too):
 *   0x222000 WP      clears CR0.WP, writes 0x5EC0DE into Locked (a read-only page of
 *                    .rdata), sets CR0.WP again: the write lands.
 *   0x222004 RO      writes Locked with CR0.WP set: the write is refused (a bug check).
 *   0x222008 CR3     __writecr3(__readcr3()): the requester's PCID's translations go (the
 *                    System's stay).
 *   0x22200C NOFLUSH the same with bit 63 set: nothing is invalidated, bit 63 not stored.
 *   0x222010 CR4     sets CR4 bit 15 (reserved): #GP(0) (a bug check).
 *   0x222014 POOL    the WP write of 0x222000, made by a routine copied into
 *                    NonPagedPoolExecute (code written at run time).
 */
#include <ntddk.h>

#define PECR_CODE(n) CTL_CODE(FILE_DEVICE_UNKNOWN, 0x800 + (n), METHOD_BUFFERED, FILE_ANY_ACCESS)
#define CR0_WP 0x10000ull
#define CR3_NOFLUSH 0x8000000000000000ull
#define CR4_RESERVED_15 0x8000ull

/* A page of its own, in .data, and a read-only page of its own, in .rdata. */
static __declspec(align(4096)) volatile ULONG64 Probe[512];
static __declspec(align(4096)) const volatile ULONG64 Locked[512] = { 7 };

/* mov rax, cr0; btr rax, 16; mov cr0, rax; mov qword [rcx], 0x5EC0DE;
   bts rax, 16; mov cr0, rax; ret: the pool routine (rcx: the page). */
static const UCHAR PoolWrite[] = {
    0x0F, 0x20, 0xC0, 0x48, 0x0F, 0xBA, 0xF0, 0x10, 0x0F, 0x22, 0xC0,
    0x48, 0xC7, 0x01, 0xDE, 0xC0, 0x5E, 0x00,
    0x48, 0x0F, 0xBA, 0xE8, 0x10, 0x0F, 0x22, 0xC0, 0xC3 };

typedef VOID (*POOL_WRITE)(volatile ULONG64 *Page);

static __declspec(noinline) ULONG64 ReadCr0(void)
{
    ULONG64 value;
    __asm__ volatile("mov %%cr0, %0" : "=r"(value));
    return value;
}

static __declspec(noinline) VOID WriteCr0(ULONG64 value)
{
    __asm__ volatile("mov %0, %%cr0" : : "r"(value) : "memory");
}

static __declspec(noinline) ULONG64 ReadCr3(void)
{
    ULONG64 value;
    __asm__ volatile("mov %%cr3, %0" : "=r"(value));
    return value;
}

static __declspec(noinline) VOID WriteCr3(ULONG64 value)
{
    __asm__ volatile("mov %0, %%cr3" : : "r"(value) : "memory");
}

static __declspec(noinline) ULONG64 ReadCr4(void)
{
    ULONG64 value;
    __asm__ volatile("mov %%cr4, %0" : "=r"(value));
    return value;
}

static __declspec(noinline) VOID WriteCr4(ULONG64 value)
{
    __asm__ volatile("mov %0, %%cr4" : : "r"(value) : "memory");
}

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
    ULONG64 value, cr0, cr3, cr4;
    PUCHAR routine;

    UNREFERENCED_PARAMETER(DeviceObject);
    value = Probe[0];                     /* the read: cached for the requester's PCID */
    switch (code) {
    case PECR_CODE(0):
        cr0 = ReadCr0();
        WriteCr0(cr0 & ~CR0_WP);
        *(volatile ULONG64 *)&Locked[0] = 0x5EC0DE;
        DbgPrint("pecrwrite.sys: CR0 %llx, WP clear %llx: wrote %llx to the read-only page "
                 "at %p\n", cr0, ReadCr0(), Locked[0], (PVOID)Locked);
        WriteCr0(cr0);
        DbgPrint("pecrwrite.sys: CR0 back to %llx\n", ReadCr0());
        break;
    case PECR_CODE(1):
        DbgPrint("pecrwrite.sys: CR0 %llx: writing the read-only page at %p\n", ReadCr0(),
                 (PVOID)Locked);
        *(volatile ULONG64 *)&Locked[0] = 0xBAD;
        DbgPrint("pecrwrite.sys: wrote it\n");
        break;
    case PECR_CODE(2):
        cr3 = ReadCr3();
        WriteCr3(cr3);
        DbgPrint("pecrwrite.sys: read %llu at %p, then CR3 %llx reloaded: %llx\n", value,
                 (PVOID)Probe, cr3, ReadCr3());
        break;
    case PECR_CODE(3):
        cr3 = ReadCr3();
        WriteCr3(cr3 | CR3_NOFLUSH);
        DbgPrint("pecrwrite.sys: read %llu at %p, then CR3 %llx reloaded with bit 63: %llx\n",
                 value, (PVOID)Probe, cr3, ReadCr3());
        break;
    case PECR_CODE(4):
        cr4 = ReadCr4();
        DbgPrint("pecrwrite.sys: CR4 %llx: setting bit 15\n", cr4);
        WriteCr4(cr4 | CR4_RESERVED_15);
        DbgPrint("pecrwrite.sys: CR4 now %llx\n", ReadCr4());
        break;
    case PECR_CODE(5):
        routine = ExAllocatePoolWithTag(NonPagedPoolExecute, sizeof(PoolWrite), 0x72577243);
        if (routine == NULL) {
            status = STATUS_INSUFFICIENT_RESOURCES;
            break;
        }
        RtlCopyMemory(routine, PoolWrite, sizeof(PoolWrite));
        ((POOL_WRITE)routine)((volatile ULONG64 *)Locked);
        DbgPrint("pecrwrite.sys: from pool at %p: wrote %llx to the read-only page at %p, "
                 "CR0 %llx\n", routine, Locked[0], (PVOID)Locked, ReadCr0());
        ExFreePoolWithTag(routine, 0x72577243);
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
    DbgPrint("pecrwrite.sys: probe page at %p, read-only page at %p holds %llu\n",
             (PVOID)Probe, (PVOID)Locked, Locked[0]);
    RtlInitUnicodeString(&name, L"\\Device\\PeCrWrite");
    status = IoCreateDevice(DriverObject, 0, &name, FILE_DEVICE_UNKNOWN, 0, FALSE, &device);
    if (!NT_SUCCESS(status))
        return status;
    device->Flags |= DO_BUFFERED_IO;
    DriverObject->MajorFunction[IRP_MJ_CREATE] = CreateClose;
    DriverObject->MajorFunction[IRP_MJ_CLOSE] = CreateClose;
    DriverObject->MajorFunction[IRP_MJ_DEVICE_CONTROL] = DeviceControl;
    return STATUS_SUCCESS;
}
