/*
 * peformat.sys: DbgPrint's string conversions for the kernel's string types
 * (the DbgPrintEx reference): %wZ a UNICODE_STRING, %Z an ANSI_STRING, %ws and
 * %S a NUL-terminated wide string. Wide text prints as ASCII, '?' for any
 * other character; a NULL pointer prints (null).
 *
 * The emulator should print
 *   peformat.sys: [wide] [ws] [S] [ansi] [pad   ] [caf?] [(null)]
 */
#include <ntddk.h>

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNICODE_STRING wide;
    ANSI_STRING ansi;

    UNREFERENCED_PARAMETER(DriverObject);
    UNREFERENCED_PARAMETER(RegistryPath);

    RtlInitUnicodeString(&wide, L"wide");
    ansi.Buffer = "ansi";
    ansi.Length = 4;
    ansi.MaximumLength = 5;
    DbgPrint("peformat.sys: [%wZ] [%ws] [%S] [%Z] [%-6ws] [%ws] [%wZ]\n", &wide, L"ws", L"S",
             &ansi, L"pad", L"caf\u00e9", (PUNICODE_STRING)NULL);
    return STATUS_SUCCESS;
}
