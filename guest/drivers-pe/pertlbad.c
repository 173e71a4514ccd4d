/*
 * pertlbad.sys: memcpy into an address nothing maps (0xFFFF9000'00000010: in
 * the kernel half, below the pools). The fault happens inside nt!memcpy, as
 * on Windows: bug check 0x50 PAGE_FAULT_IN_NONPAGED_AREA with parameters
 * (0xFFFF900000000010, 2 = write, the RIP in nt!memcpy, 0); the driver is
 * blamed as memcpy's caller, and "copied?!" never appears.
 *
 * First DriverEntry starts the slow device and waits up to 1 s for nothing:
 * when a test connects CopyingIsr to the device's vector, the same memcpy runs
 * in the ISR, at the device's IRQL, and no page fault may be taken there: bug
 * check 0xA IRQL_NOT_LESS_OR_EQUAL (address, IRQL 5, 1 = write, the RIP in
 * nt!memcpy), 0xA rather than 0xD1 since the faulting code is the kernel's.
 */
#include <ntddk.h>

static volatile ULONG_PTR unmapped_address = 0xFFFF900000000010ULL;
static volatile SIZE_T length = 16;
static KEVENT never;

static void copy(void)
{
    char source[16] = "sixteen bytes..";

    memcpy((void *)unmapped_address, source, length);
}

BOOLEAN CopyingIsr(PKINTERRUPT Interrupt, PVOID Context)
{
    UNREFERENCED_PARAMETER(Interrupt);
    UNREFERENCED_PARAMETER(Context);
    DbgPrint("pertlbad.sys: memcpy at DIRQL\n");
    copy();
    return TRUE;
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    LARGE_INTEGER second;

    UNREFERENCED_PARAMETER(DriverObject);
    UNREFERENCED_PARAMETER(RegistryPath);

    KeInitializeEvent(&never, NotificationEvent, FALSE);
    second.QuadPart = -10000000;
    __outdword(0x300, 1);
    KeWaitForSingleObject(&never, Executive, KernelMode, FALSE, &second);
    DbgPrint("pertlbad.sys: memcpy to an unmapped kernel address\n");
    copy();
    DbgPrint("copied?!\n");
    return STATUS_UNSUCCESSFUL;
}
