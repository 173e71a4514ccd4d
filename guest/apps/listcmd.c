/*
 * listcmd empty|flush|purge|all|bad: sends the memory-list commands RAMMap sends
 * on Windows, NtSetSystemInformation(SystemMemoryListInformation, &command, 4):
 *     empty  MemoryEmptyWorkingSets (2): every page leaves every working set
 *            (it stays in RAM, on the standby or modified list)
 *     flush  MemoryFlushModifiedList (3): the modified pages are written to
 *            the pagefile (they move to the standby list)
 *     purge  MemoryPurgeStandbyList (4): the standby frames become free (their
 *            pages are then only in the pagefile)
 *     all    empty, then flush, then purge: everything pageable ends up out of RAM
 * and prints `listcmd: <name> 0x%08x` (the status) for each; exit status 0 when
 * every command succeeded, else 1.
 *
 * `bad` sends three requests the service must refuse and prints their statuses
 * the same way, exit status 0 whatever they are:
 *     listcmd: bad-length 0x%08x    MemoryEmptyWorkingSets with a length of 2
 *     listcmd: bad-command 0x%08x   command 99, length 4
 *     listcmd: bad-class 0x%08x     information class 5, a valid command, length 4
 *
 * Anything else prints `usage: listcmd empty|flush|purge|all|bad` and exits 2.
 */
#include <stdint.h>

#include <emu/lib.h>

#include "paging.h"

/* One NtSetSystemInformation call; prints its status under `label`. */
static NTSTATUS send(const char *label, uint32_t information_class, uint32_t command,
                     uint32_t length)
{
    NTSTATUS status = NtSetSystemInformation(information_class, &command, length);

    printf("listcmd: %s 0x%08x\n", label, (unsigned)status);
    return status;
}

/* The commands named `which` (one of them, or all in order); returns 0 if all succeeded. */
static int run(const char *which)
{
    int all = strcmp(which, "all") == 0, failed = 0, matched = 0;

    for (size_t i = 0; i < MEMORY_LIST_COMMANDS; i++) {
        if (!all && strcmp(which, memory_list_commands[i].name) != 0)
            continue;
        matched = 1;
        failed |= !NT_SUCCESS(send(memory_list_commands[i].name, SystemMemoryListInformation,
                                   memory_list_commands[i].command, sizeof(uint32_t)));
    }
    return matched ? failed : -1;
}

static void bad(void)
{
    send("bad-length", SystemMemoryListInformation, MemoryEmptyWorkingSets, 2);
    send("bad-command", SystemMemoryListInformation, 99, sizeof(uint32_t));
    send("bad-class", 5, MemoryEmptyWorkingSets, sizeof(uint32_t));
}

int main(int argc, char **argv)
{
    int result = -1;

    if (argc == 2 && strcmp(argv[1], "bad") == 0) {
        bad();
        return 0;
    }
    if (argc == 2)
        result = run(argv[1]);
    if (result < 0) {
        printf("usage: listcmd empty|flush|purge|all|bad\n");
        return 2;
    }
    return result;
}
