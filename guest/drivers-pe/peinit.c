/*
 * peinit.sys: code in INIT, the discardable section. DriverEntry and InitOnly are
 * placed there with #pragma alloc_text, and the linker directive marks INIT
 * discardable (IMAGE_SCN_MEM_DISCARDABLE), as the WDK's /SECTION:INIT,d does; both
 * pragmas need -fms-extensions with clang, which the guest Makefile passes. Once
 * DriverEntry has returned STATUS_SUCCESS the loader frees INIT, so the call to
 * InitOnly that DriverUnload makes through a saved pointer fetches from a page that
 * is no longer there.
 *
 * The emulator should print
 *   peinit.sys: InitOnly runs in INIT
 * and, when every process has ended,
 *   peinit.sys: DriverUnload calls InitOnly, in freed INIT
 * then bug check 0x50 PAGE_FAULT_IN_NONPAGED_AREA (InitOnly's address, 0x10 = execute,
 * the same address as RIP, 0).
 */
#include <ntddk.h>

DRIVER_INITIALIZE DriverEntry;
DRIVER_UNLOAD PeInitUnload;
static VOID InitOnly(VOID);

#pragma comment(linker, "/SECTION:INIT,ERD")
#pragma alloc_text(INIT, DriverEntry)
#pragma alloc_text(INIT, InitOnly)

VOID (*volatile LaterCall)(VOID);

static VOID InitOnly(VOID)
{
    DbgPrint("peinit.sys: InitOnly runs in INIT\n");
}

VOID PeInitUnload(PDRIVER_OBJECT DriverObject)
{
    UNREFERENCED_PARAMETER(DriverObject);

    DbgPrint("peinit.sys: DriverUnload calls InitOnly, in freed INIT\n");
    LaterCall();
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNREFERENCED_PARAMETER(RegistryPath);

    LaterCall = InitOnly;
    LaterCall();
    DriverObject->DriverUnload = PeInitUnload;
    return STATUS_SUCCESS;
}
