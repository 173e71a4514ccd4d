/*
 * Shared by the paging apps (pattern, reread, listcmd, pagedrv): committing a
 * region in one call, and the names of NtSetSystemInformation's memory list
 * commands.
 */
#ifndef PAGING_H
#define PAGING_H

#include <stdint.h>

#include <emu/lib.h>

#define MIB (1024 * 1024UL)

/* Commits `mib` MiB read-write in one call; prints "<who>: commit of N MiB failed: 0x..."
 * and exits 3 if refused. */
static inline volatile uint64_t *commit_mib(const char *who, unsigned long mib)
{
    void *base = NULL;
    size_t size = mib * MIB;
    NTSTATUS status = NtAllocateVirtualMemory(&base, &size, MEM_RESERVE | MEM_COMMIT,
                                              PAGE_READWRITE);

    if (!NT_SUCCESS(status)) {
        printf("%s: commit of %lu MiB failed: 0x%08x\n", who, mib, (unsigned)status);
        exit(3);
    }
    return base;
}

/* The memory list commands, in the order `all` sends them. */
static const struct {
    const char *name;
    uint32_t command;
} memory_list_commands[] = {
    {"empty", MemoryEmptyWorkingSets},
    {"flush", MemoryFlushModifiedList},
    {"purge", MemoryPurgeStandbyList},
};

#define MEMORY_LIST_COMMANDS (sizeof memory_list_commands / sizeof memory_list_commands[0])

#endif /* PAGING_H */
