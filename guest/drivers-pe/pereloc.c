/*
 * pereloc.sys: a driver with absolute addresses in its data, which the linker
 * records in .reloc (IMAGE_REL_BASED_DIR64 entries). Linked for 0x180000000,
 * it is loaded in the kernel half: every pointer in the table below is right
 * only if the loader applied its relocations.
 *
 * The emulator should print
 *   pereloc.sys: alpha beta gamma
 */
#include <ntddk.h>

static const char *const words[] = {"alpha", "beta", "gamma"};
/* A pointer to a pointer: two relocated addresses in a row. */
static const char *const *volatile last = &words[2];

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNREFERENCED_PARAMETER(DriverObject);
    UNREFERENCED_PARAMETER(RegistryPath);

    DbgPrint("pereloc.sys: %s %s %s\n", words[0], words[1], *last);
    return STATUS_SUCCESS;
}
