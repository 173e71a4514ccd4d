/*
 * handles: what a handle is. Creates an event and prints its handle value,
 * duplicates it (NtDuplicateObject: a second value naming the same
 * object), closes the duplicate, and shows that the closed value is dead:
 * closing it again and waiting on it (a poll) both return
 * STATUS_INVALID_HANDLE. Prints
 *
 *     event handle H           (a small multiple of 4)
 *     duplicate D              (another one, D != H)
 *     close again 0xc0000008
 *     wait closed 0xc0000008
 *
 * With an argument (`handles V`), it then closes its own event, so it
 * holds no handle at all, and calls NtSetEvent on the value V, meant to be
 * a handle printed by ANOTHER process: handle values are private to the
 * process that holds them, so it prints
 *
 *     foreign 0xc0000008
 *
 * Exits with 0; a failing create or duplicate prints "<what> failed
 * 0x%08x" and exits with 1.
 */
#include <stdint.h>

#include <emu/lib.h>

static unsigned long long handle_value(HANDLE handle)
{
    return (unsigned long long)(uintptr_t)handle;
}

/* NtSetEvent on a handle value taken from the command line. */
static void set_foreign_event(const char *text)
{
    HANDLE foreign = (HANDLE)(uintptr_t)strtoul(text, NULL, 0);

    printf("foreign 0x%08x\n", (unsigned)NtSetEvent(foreign));
}

int main(int argc, char **argv)
{
    HANDLE event;
    HANDLE duplicate;
    NTSTATUS status = NtCreateEvent(&event, 1 /* manual-reset */, 0 /* not signalled */);

    if (!NT_SUCCESS(status)) {
        printf("create event failed 0x%08x\n", (unsigned)status);
        return 1;
    }
    printf("event handle %llu\n", handle_value(event));

    status = NtDuplicateObject(event, &duplicate);
    if (!NT_SUCCESS(status)) {
        printf("duplicate failed 0x%08x\n", (unsigned)status);
        return 1;
    }
    printf("duplicate %llu\n", handle_value(duplicate));

    status = NtClose(duplicate);
    if (!NT_SUCCESS(status)) {
        printf("close failed 0x%08x\n", (unsigned)status);
        return 1;
    }
    printf("close again 0x%08x\n", (unsigned)NtClose(duplicate));
    printf("wait closed 0x%08x\n", (unsigned)NtWaitForSingleObject(duplicate, 0));

    /* Close our own event first: otherwise V could be our own handle value (both are small). */
    NtClose(event);
    if (argc > 1)
        set_foreign_event(argv[1]);
    return 0;
}
