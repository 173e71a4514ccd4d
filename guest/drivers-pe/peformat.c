/*
 * peformat.sys: DbgPrint's string conversions for the kernel's string types
 * (the DbgPrintEx reference): %wZ a UNICODE_STRING, %Z an ANSI_STRING, %ws and
 * %S a NUL-terminated wide string. Wide text prints as ASCII, '?' for any
 * other character; a NULL pointer prints (null).
 *
 * Then precisions, as the C run-time's printf has them: the most characters of a
 * string, the fewest digits of an integer (the 0 flag then ignored).
 *
 * The emulator should print
 *   peformat.sys: [wide] [ws] [S] [ansi] [pad   ] [caf?] [(null)]
 *   peformat.sys: [ab] [wi] [007] [00ab] [ -005] [xy    ] [] [  042]
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
    DbgPrint("peformat.sys: [%.2s] [%.2wZ] [%.3d] [%.4x] [%5.3d] [%-6.2s] [%.0d] [%05.3u]\n",
             "abcdef", &wide, 7, 0xab, -5, "xyz", 0, 42u);
    return STATUS_SUCCESS;
}
