/*
 * hello.sys: the smallest useful driver. DriverEntry runs at ring 0 and uses
 * every kernel export the executive has so far, through the Microsoft x64
 * calling convention:
 *
 *   - DbgPrint with a %s argument: a string in the driver's own .rodata;
 *   - ExAllocatePoolWithTag: 64 bytes of NonPagedPool, filled with a message
 *     that DbgPrint prints back, with the block's address (%p);
 *   - ExFreePoolWithTag: the block goes back (a bad free would bug-check
 *     0xC2 BAD_POOL_CALLER);
 *   - KeGetCurrentIrql and PsGetCurrentProcessId.
 *
 * The image carries exactly one R_X86_64_RELATIVE relocation, besides one
 * R_X86_64_GLOB_DAT per import: the pointer `driver_name` (read through a
 * volatile, so gcc cannot fold it) holds the address of "hello.sys" and is
 * correct only once the loader has added the image's base.
 *
 * The emulator should print (%p as 16 upper-case hex digits, in the pool):
 *   hello from ring 0: DriverEntry of hello.sys
 *   pool block at FFFFA000xxxxxxxx: "written at ring 0 into NonPagedPool"
 *   pool block freed
 *   irql 0, process 0
 * and report that DriverEntry returned STATUS_SUCCESS (0x00000000). IRQL is
 * PASSIVE_LEVEL (0); the process id is 0 when DriverEntry runs in the system
 * context, before any process exists (else the current process's id).
 */
#include <ddk/ntddk.h>

#define HELLO_TAG  DDK_TAG('H', 'e', 'l', 'o')
#define BLOCK_SIZE 64

static const char message[] = "written at ring 0 into NonPagedPool";
_Static_assert(sizeof(message) <= BLOCK_SIZE, "the message fits the pool block");

/* A pointer stored in the image: the loader must relocate it (R_X86_64_RELATIVE). */
static const char *const volatile driver_name = "hello.sys";

NTSTATUS NTAPI DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNREFERENCED_PARAMETER(DriverObject);
    UNREFERENCED_PARAMETER(RegistryPath);

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
