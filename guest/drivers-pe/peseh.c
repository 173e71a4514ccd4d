/*
 * peseh.sys: structured exception handling in a PE driver, written as Windows drivers
 * write it (clang accepts __try/__except/__finally for this target; the image's
 * .pdata/.xdata name __C_specific_handler and its scope tables).
 *
 * DriverEntry runs each case once and prints one line for it:
 *   peseh.sys: probe: caught 0xC0000005 at <hex>, info 1 <hex>   ProbeForRead of a kernel
 *       address raises STATUS_ACCESS_VIOLATION; the filter reads GetExceptionInformation()
 *   peseh.sys: misaligned: caught 0x80000002                   ProbeForRead, alignment 4
 *   peseh.sys: finally: inner finally ran, abnormal 1; caught 0xC0000005
 *   peseh.sys: nested: inner filter said CONTINUE_SEARCH; outer caught 0xC0000005
 *   peseh.sys: user address: caught 0xC0000005, info 0 0x1000     a ring-0 read of an
 *       unmapped user address (the system context has no user pages)
 *   peseh.sys: divide: caught 0xC0000094                          #DE in the driver
 *   peseh.sys: continue: result 7        the filter sets the CONTEXT's RCX (the divisor)
 *       to 2 and returns EXCEPTION_CONTINUE_EXECUTION: the idiv runs again, 14 / 2
 * and creates \Device\PeSeh (\DosDevices\PeSeh) for METHOD_NEITHER requests, guarded as
 * Microsoft's sioctl sample guards them:
 *   IOCTL_PESEH_GUARDED: __try { ProbeForRead(Type3InputBuffer); copy it reversed into
 *       UserBuffer after ProbeForWrite } __except: the IRP completes with the exception code
 *   IOCTL_PESEH_UNGUARDED: the same ProbeForRead with no handler: nothing catches it
 */
#include <ntddk.h>

#define IOCTL_PESEH_GUARDED CTL_CODE(FILE_DEVICE_UNKNOWN, 0x900, METHOD_NEITHER, FILE_ANY_ACCESS)
#define IOCTL_PESEH_UNGUARDED CTL_CODE(FILE_DEVICE_UNKNOWN, 0x901, METHOD_NEITHER, FILE_ANY_ACCESS)

static volatile ULONG_PTR kernel_address = 0xFFFF900000000000ULL;
static volatile ULONG_PTR user_address = 0x1000;
static volatile LONG zero;
static volatile LONG finally_ran, abnormal;
static volatile LONG inner_filter_ran;
static ULONG_PTR seen_address, seen_info0, seen_info1;

static LONG Remember(PEXCEPTION_POINTERS pointers)
{
    seen_address = (ULONG_PTR)pointers->ExceptionRecord->ExceptionAddress;
    seen_info0 = pointers->ExceptionRecord->ExceptionInformation[0];
    seen_info1 = pointers->ExceptionRecord->ExceptionInformation[1];
    return EXCEPTION_EXECUTE_HANDLER;
}

__declspec(noinline) static NTSTATUS ProbeCase(PVOID address, ULONG alignment)
{
    __try {
        ProbeForRead(address, 8, alignment);
    } __except (Remember(GetExceptionInformation())) {
        return GetExceptionCode();
    }
    return STATUS_SUCCESS;
}

__declspec(noinline) static void Inner(void)
{
    __try {
        ProbeForRead((PVOID)kernel_address, 4, 1);
    } __finally {
        finally_ran = 1;
        abnormal = AbnormalTermination();
    }
}

__declspec(noinline) static NTSTATUS FinallyCase(void)
{
    __try {
        Inner();
    } __except (EXCEPTION_EXECUTE_HANDLER) {
        return GetExceptionCode();
    }
    return STATUS_SUCCESS;
}

static LONG SayContinueSearch(void)
{
    inner_filter_ran = 1;
    return EXCEPTION_CONTINUE_SEARCH;
}

__declspec(noinline) static NTSTATUS NestedCase(void)
{
    __try {
        __try {
            ProbeForRead((PVOID)kernel_address, 4, 1);
        } __except (SayContinueSearch()) {
            return STATUS_UNSUCCESSFUL;
        }
    } __except (EXCEPTION_EXECUTE_HANDLER) {
        return GetExceptionCode();
    }
    return STATUS_SUCCESS;
}

/* clang's SEH on this target is synchronous: a __try covers the calls made in it, not a
   fault of an instruction in its own body (clang has no -fasync-exceptions for
   x86_64-windows-gnu, and drops a __try with no call in it). So the faulting access is a
   call away, as it would be in ProbeForRead or memcpy. */
__declspec(noinline) static LONG ReadLong(volatile LONG *p)
{
    return *p;
}

__declspec(noinline) static LONG Divide(LONG dividend, LONG divisor)
{
    LONG result;

    __asm__ volatile("cltd; idivl %%ecx" : "=a"(result) : "a"(dividend), "c"(divisor) : "rdx");
    return result;
}

__declspec(noinline) static NTSTATUS UserAddressCase(void)
{
    __try {
        return ReadLong((volatile LONG *)user_address);
    } __except (Remember(GetExceptionInformation())) {
        return GetExceptionCode();
    }
}

__declspec(noinline) static NTSTATUS DivideCase(void)
{
    __try {
        return Divide(100, zero);
    } __except (EXCEPTION_EXECUTE_HANDLER) {
        return GetExceptionCode();
    }
}

static LONG FixDivisor(PEXCEPTION_POINTERS pointers)
{
    /* The divisor is in a register the CONTEXT holds: make it 2 and run the div again. */
    pointers->ContextRecord->Rcx = 2;
    return EXCEPTION_CONTINUE_EXECUTION;
}

__declspec(noinline) static LONG ContinueCase(void)
{
    __try {
        return Divide(14, zero);
    } __except (FixDivisor(GetExceptionInformation())) {
        return -1;
    }
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

__declspec(noinline) static ULONG Reverse(volatile const char *in, ULONG inLength, volatile char *out, ULONG outLength)
{
    ULONG n = inLength < outLength ? inLength : outLength;

    for (ULONG i = 0; i < n; i++)
        out[i] = in[n - 1 - i];
    return n;
}

static NTSTATUS DeviceControl(PDEVICE_OBJECT DeviceObject, PIRP Irp)
{
    PIO_STACK_LOCATION stack = IoGetCurrentIrpStackLocation(Irp);
    PVOID in = stack->Parameters.DeviceIoControl.Type3InputBuffer;
    ULONG inLength = stack->Parameters.DeviceIoControl.InputBufferLength;
    ULONG outLength = stack->Parameters.DeviceIoControl.OutputBufferLength;
    NTSTATUS status = STATUS_SUCCESS;
    ULONG_PTR n = 0;

    UNREFERENCED_PARAMETER(DeviceObject);
    switch (stack->Parameters.DeviceIoControl.IoControlCode) {
    case IOCTL_PESEH_GUARDED:
        __try {
            ProbeForRead(in, inLength, sizeof(UCHAR));
            ProbeForWrite(Irp->UserBuffer, outLength, sizeof(UCHAR));
            n = Reverse(in, inLength, Irp->UserBuffer, outLength);
        } __except (EXCEPTION_EXECUTE_HANDLER) {
            status = GetExceptionCode();
            DbgPrint("peseh.sys: exception 0x%08X in the guarded request\n", status);
        }
        break;
    case IOCTL_PESEH_UNGUARDED:
        ProbeForRead(in, inLength, sizeof(UCHAR));
        n = Reverse(in, inLength, Irp->UserBuffer, outLength);
        break;
    default:
        status = STATUS_INVALID_DEVICE_REQUEST;
    }
    return Complete(Irp, status, n);
}

static VOID Unload(PDRIVER_OBJECT DriverObject)
{
    UNICODE_STRING link;

    RtlInitUnicodeString(&link, L"\\DosDevices\\PeSeh");
    IoDeleteSymbolicLink(&link);
    IoDeleteDevice(DriverObject->DeviceObject);
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNICODE_STRING name, link;
    PDEVICE_OBJECT device;
    NTSTATUS status;

    UNREFERENCED_PARAMETER(RegistryPath);
    status = ProbeCase((PVOID)kernel_address, 1);
    DbgPrint("peseh.sys: probe: caught 0x%08X at %p, info %Iu %p\n", status, seen_address,
             seen_info0, seen_info1);
    DbgPrint("peseh.sys: misaligned: caught 0x%08X\n", ProbeCase((PVOID)0x1001, 4));
    status = FinallyCase();
    DbgPrint("peseh.sys: finally: inner finally ran %d, abnormal %d; caught 0x%08X\n",
             finally_ran, abnormal, status);
    status = NestedCase();
    DbgPrint("peseh.sys: nested: inner filter ran %d; outer caught 0x%08X\n",
             inner_filter_ran, status);
    status = UserAddressCase();
    DbgPrint("peseh.sys: user address: caught 0x%08X, info %Iu %p\n", status, seen_info0,
             seen_info1);
    DbgPrint("peseh.sys: divide: caught 0x%08X\n", DivideCase());
    DbgPrint("peseh.sys: continue: result %d\n", ContinueCase());

    RtlInitUnicodeString(&name, L"\\Device\\PeSeh");
    status = IoCreateDevice(DriverObject, 0, &name, FILE_DEVICE_UNKNOWN, 0, FALSE, &device);
    if (!NT_SUCCESS(status))
        return status;
    RtlInitUnicodeString(&link, L"\\DosDevices\\PeSeh");
    status = IoCreateSymbolicLink(&link, &name);
    if (!NT_SUCCESS(status)) {
        IoDeleteDevice(device);
        return status;
    }
    DriverObject->MajorFunction[IRP_MJ_CREATE] = CreateClose;
    DriverObject->MajorFunction[IRP_MJ_CLOSE] = CreateClose;
    DriverObject->MajorFunction[IRP_MJ_DEVICE_CONTROL] = DeviceControl;
    DriverObject->DriverUnload = Unload;
    return STATUS_SUCCESS;
}
