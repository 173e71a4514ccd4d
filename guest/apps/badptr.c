/*
 * badptr: hands NtWriteConsole buffers it must refuse and prints each
 * status. The executive probes every user pointer the way ProbeForRead
 * does (docs/abi.md, "Pointers from user mode"): the app is not killed,
 * each call returns STATUS_ACCESS_VIOLATION (0xc0000005) or another error,
 * and "still alive" is printed at the end.
 */
#include <stdint.h>

#include <emu/lib.h>

#define PROBE_LENGTH 16
#define KERNEL_HALF_START 0xFFFF800000000000ULL    /* the first kernel-half address */
#define UNMAPPED_USER     0x0000100000000000ULL    /* user half, 16 TiB: nothing maps it */
#define USER_HALF_LAST_QWORD 0x00007FFFFFFFFFF8ULL /* the last 8 bytes below the non-canonical hole */

static const char message[] = "never printed\n";

/* Calls NtWriteConsole(buffer, length) and prints its status after `label`. */
static void try_write(const char *label, uintptr_t buffer, size_t length)
{
    NTSTATUS status = NtWriteConsole((const void *)buffer, length);

    printf("%s: 0x%08x\n", label, (unsigned)status);
}

int main(void)
{
    try_write("null", 0, PROBE_LENGTH);
    try_write("kernel", KERNEL_HALF_START, PROBE_LENGTH);
    try_write("unmapped", UNMAPPED_USER, PROBE_LENGTH);
    /* Starts in the user half's last qword and runs past its end: the whole range is checked. */
    try_write("straddle", USER_HALF_LAST_QWORD, PROBE_LENGTH);
    /* buffer + length wraps around 2^64: the check must not overflow. */
    try_write("huge", (uintptr_t)message, SIZE_MAX);
    printf("still alive\n");
    return 0;
}
