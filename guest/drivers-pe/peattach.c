/*
 * peattach.sys: reading another process's user memory. PsLookupProcessByProcessId
 * gives the PEPROCESS of two apps (ids TargetA and TargetB: 12 and 20, the first
 * two processes, created before DriverEntry runs; 4 and 8 are the System process
 * and its thread); KeStackAttachProcess
 * switches CR3 to each in turn, nested, and the same user address (Address: 16
 * bytes under the top of the main stack, where the last argument ends) reads
 * each one's own bytes; attaching to the process it is in already saves 1 and
 * switches nothing; KeUnstackDetachProcess goes back one level each time.
 * The KAPC_STATEs hold what Windows saves: NULL, the outer process, 1. (The
 * casts: mingw-w64's ntifs.h declares PKPROCESS apart from PEPROCESS; the WDK's
 * makes them one type.)
 * A page of A's trimmed from its working set is faulted back in, in A (the
 * process whose address space is current). ObDereferenceObject releases the
 * lookups. Then the misuse: attached to A
 * then B, detaching with A's state first (back to the system context, not
 * attached), then with B's: bug check 0x6 INVALID_PROCESS_DETACH_ATTEMPT.
 *
 * The emulator should print (marker A / marker B: the apps' last arguments)
 *   peattach.sys: lookup 0xc000000d 0x0 0x0 distinct 1 type 3
 *   peattach.sys: A [...marker A...]
 *   peattach.sys: B [...marker B...]
 *   peattach.sys: B again [...marker B...]
 *   peattach.sys: A again [...marker A...]
 *   peattach.sys: saved 1 1 1 dereference 0 0
 *   peattach.sys: detached with the outer state first
 */
#include <ntifs.h>

ULONG_PTR TargetA = 12, TargetB = 20;     /* ids: process 12, its thread 16, process 20 */
ULONG_PTR Address = 0x7FFFFFFE0000ULL - 16;

static void show(const char *what)
{
    char text[17];

    RtlCopyMemory(text, (const void *)Address, 16);
    text[16] = 0;
    DbgPrint("peattach.sys: %s [%s]\n", what, text);
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    PEPROCESS a = NULL, b = NULL, none = NULL;
    KAPC_STATE s1, s2, s3;
    NTSTATUS missing, found_a, found_b;
    LONG_PTR left_a, left_b;

    UNREFERENCED_PARAMETER(DriverObject);
    UNREFERENCED_PARAMETER(RegistryPath);

    missing = PsLookupProcessByProcessId((HANDLE)0x1234, &none);
    found_a = PsLookupProcessByProcessId((HANDLE)TargetA, &a);
    found_b = PsLookupProcessByProcessId((HANDLE)TargetB, &b);
    DbgPrint("peattach.sys: lookup 0x%x 0x%x 0x%x distinct %d type %d\n", missing, found_a,
             found_b, a != b && a && b, a ? ((DISPATCHER_HEADER *)a)->Type : -1);

    KeStackAttachProcess((PKPROCESS)a, &s1);
    show("A");
    KeStackAttachProcess((PKPROCESS)b, &s2);
    show("B");
    KeStackAttachProcess((PKPROCESS)b, &s3);
    KeUnstackDetachProcess(&s3);
    show("B again");
    KeUnstackDetachProcess(&s2);
    show("A again");
    KeUnstackDetachProcess(&s1);
    left_a = ObDereferenceObject(a);
    left_b = ObDereferenceObject(b);
    DbgPrint("peattach.sys: saved %d %d %d dereference %d %d\n", s1.Process == NULL,
             s2.Process == (PKPROCESS)a, s3.Process == (PKPROCESS)1, (int)left_a, (int)left_b);

    KeStackAttachProcess((PKPROCESS)a, &s1);
    KeStackAttachProcess((PKPROCESS)b, &s2);
    KeUnstackDetachProcess(&s1);
    DbgPrint("peattach.sys: detached with the outer state first\n");
    KeUnstackDetachProcess(&s2);
    DbgPrint("peattach.sys: detached twice?!\n");
    return STATUS_SUCCESS;
}
