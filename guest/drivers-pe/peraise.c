/*
 * peraise.sys: the routines that raise, each caught by the driver's own __try/__except,
 * one line each:
 *   peraise.sys: ExRaiseStatus: caught 0xE0000001, flags 1, 0 parameters
 *   peraise.sys: noncontinuable: caught 0xC0000025 (the record chains 0xE0000002)
 *       a filter returned EXCEPTION_CONTINUE_EXECUTION for a noncontinuable exception:
 *       STATUS_NONCONTINUABLE_EXCEPTION is raised in its place
 *   peraise.sys: ProbeForWrite: caught 0xC0000005, info 0 0000000000010000
 *       an unmapped user page (the system context has none)
 *   ... then RtlAssert prints Windows' message and breaks: caught 0x80000003
 *   peraise.sys: int3: caught 0x80000003       an int3 in the driver (no kernel debugger)
 *   peraise.sys: ud2: caught 0xC000001D        #UD in the driver
 *   peraise.sys: KeBugCheck(0xE2)   and the machine stops: bug check 0xE2 (0, 0, 0, 0)
 */
#include <ntddk.h>

static ULONG_PTR seen_flags, seen_count, seen_nested_code, seen_info0, seen_info1;
static volatile ULONG_PTR user_page = 0x10000;

static LONG Remember(PEXCEPTION_POINTERS pointers, LONG verdict)
{
    PEXCEPTION_RECORD record = pointers->ExceptionRecord;

    seen_flags = record->ExceptionFlags;
    seen_count = record->NumberParameters;
    seen_info0 = record->ExceptionInformation[0];
    seen_info1 = record->ExceptionInformation[1];
    seen_nested_code = record->ExceptionRecord ? record->ExceptionRecord->ExceptionCode : 0;
    return verdict;
}

__declspec(noinline) static NTSTATUS Raise(NTSTATUS status)
{
    __try {
        ExRaiseStatus(status);
    } __except (Remember(GetExceptionInformation(), EXCEPTION_EXECUTE_HANDLER)) {
        return GetExceptionCode();
    }
    return STATUS_SUCCESS;
}

__declspec(noinline) static NTSTATUS ContinueNoncontinuable(void)
{
    __try {
        __try {
            ExRaiseStatus(0xE0000002);
        } __except (GetExceptionCode() == 0xE0000002 ? EXCEPTION_CONTINUE_EXECUTION
                                                     : EXCEPTION_CONTINUE_SEARCH) {
            return STATUS_UNSUCCESSFUL;
        }
    } __except (Remember(GetExceptionInformation(), EXCEPTION_EXECUTE_HANDLER)) {
        return GetExceptionCode();
    }
    return STATUS_SUCCESS;
}

__declspec(noinline) static NTSTATUS ProbeWrite(void)
{
    __try {
        ProbeForWrite((PVOID)user_page, 16, 4);
    } __except (Remember(GetExceptionInformation(), EXCEPTION_EXECUTE_HANDLER)) {
        return GetExceptionCode();
    }
    return STATUS_SUCCESS;
}

__declspec(noinline) static void Break(void)
{
    __debugbreak();                     /* int3: STATUS_BREAKPOINT with no kernel debugger */
}

__declspec(noinline) static void Undefined(void)
{
    __asm__ volatile("ud2");            /* #UD: STATUS_ILLEGAL_INSTRUCTION */
}

__declspec(noinline) static NTSTATUS Trap(void (*routine)(void))
{
    __try {
        routine();
    } __except (Remember(GetExceptionInformation(), EXCEPTION_EXECUTE_HANDLER)) {
        return GetExceptionCode();
    }
    return STATUS_SUCCESS;
}

__declspec(noinline) static NTSTATUS Assert(void)
{
    __try {
        RtlAssert("1 == 2", "peraise.c", 42, "peraise: ");
    } __except (EXCEPTION_EXECUTE_HANDLER) {
        return GetExceptionCode();
    }
    return STATUS_SUCCESS;
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    NTSTATUS status;

    UNREFERENCED_PARAMETER(DriverObject);
    UNREFERENCED_PARAMETER(RegistryPath);
    status = Raise(0xE0000001);
    DbgPrint("peraise.sys: ExRaiseStatus: caught 0x%08X, flags %Iu, %Iu parameters\n", status,
             seen_flags, seen_count);
    status = ContinueNoncontinuable();
    DbgPrint("peraise.sys: noncontinuable: caught 0x%08X (the record chains 0x%08X)\n", status,
             (ULONG)seen_nested_code);
    status = ProbeWrite();
    DbgPrint("peraise.sys: ProbeForWrite: caught 0x%08X, info %Iu %p\n", status, seen_info0,
             seen_info1);
    DbgPrint("peraise.sys: RtlAssert: caught 0x%08X\n", Assert());
    DbgPrint("peraise.sys: int3: caught 0x%08X\n", Trap(Break));
    DbgPrint("peraise.sys: ud2: caught 0x%08X\n", Trap(Undefined));
    DbgPrint("peraise.sys: KeBugCheck(0xE2)\n");
    KeBugCheck(0xE2);
}
