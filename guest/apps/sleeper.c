/*
 * sleeper: `sleeper N` sleeps for N guest instructions (NtDelayExecution;
 * default 100000), then shows that a wait on an event nobody sets ends
 * with STATUS_TIMEOUT (0x102), both as a poll (timeout 0) and after a
 * timeout of 1000 instructions. Prints
 *
 *     before
 *     after
 *     poll 0x00000102
 *     timed 0x00000102
 *
 * and exits with 0. While it sleeps, other threads and processes run: the
 * machine's clock counts instructions, so the sleep is deterministic. A
 * failing service prints "<what> failed 0x%08x" and exits with 1.
 */
#include <stdint.h>

#include <emu/lib.h>

#define DEFAULT_SLEEP 100000UL
#define TIMED_WAIT 1000         /* guest instructions */

int main(int argc, char **argv)
{
    uint64_t sleep = argc > 1 ? strtoul(argv[1], NULL, 0) : DEFAULT_SLEEP;
    HANDLE event;
    NTSTATUS status;

    printf("before\n");
    status = NtDelayExecution(sleep);
    if (!NT_SUCCESS(status)) {
        printf("delay failed 0x%08x\n", (unsigned)status);
        return 1;
    }
    printf("after\n");

    status = NtCreateEvent(&event, 1 /* manual-reset */, 0 /* not signalled */);
    if (!NT_SUCCESS(status)) {
        printf("create event failed 0x%08x\n", (unsigned)status);
        return 1;
    }
    printf("poll 0x%08x\n", (unsigned)NtWaitForSingleObject(event, 0));
    printf("timed 0x%08x\n", (unsigned)NtWaitForSingleObject(event, TIMED_WAIT));
    NtClose(event);
    return 0;
}
