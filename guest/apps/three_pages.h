/*
 * The body shared by notepad and myapp, the two processes of the seed's
 * picture: each commits three pages at the same virtual address,
 * 0x7F7'93950000, writes its own marker into each, gives the CPU away a few
 * times so that the other can run in between, and reads its markers back.
 * Same virtual addresses, different frames: neither sees the other's data.
 */
#ifndef THREE_PAGES_H
#define THREE_PAGES_H

#include <emu/lib.h>

#define THREE_PAGES_BASE 0x7F793950000ULL    /* the address in the seed's picture */
#define THREE_PAGES 3
#define PAGE_BYTES 4096
#define MARKER_BYTES 32

/* Writes "<name> page <i>" at the start of each page; returns 0, or 1 on a wrong read-back. */
static int three_pages(const char *name)
{
    void *base = (void *)THREE_PAGES_BASE;
    size_t size = THREE_PAGES * PAGE_BYTES;
    NTSTATUS status = NtAllocateVirtualMemory(&base, &size, MEM_RESERVE | MEM_COMMIT,
                                              PAGE_READWRITE);

    if (!NT_SUCCESS(status)) {
        printf("%s: NtAllocateVirtualMemory failed: 0x%08x\n", name, (unsigned)status);
        return 1;
    }
    printf("%s: committed %zu bytes at %p\n", name, size, base);
    char *pages = base;
    for (int i = 0; i < THREE_PAGES; i++) {
        snprintf(pages + i * PAGE_BYTES, MARKER_BYTES, "%s page %d", name, i);
        NtYieldExecution();                   /* let the other process run in between */
    }
    for (int i = 0; i < THREE_PAGES; i++) {
        char expected[MARKER_BYTES];

        snprintf(expected, sizeof expected, "%s page %d", name, i);
        printf("%s: %p holds \"%s\"\n", name, (void *)(pages + i * PAGE_BYTES),
               pages + i * PAGE_BYTES);
        if (strcmp(pages + i * PAGE_BYTES, expected) != 0) {
            printf("%s: expected \"%s\"?!\n", name, expected);
            return 1;
        }
        NtYieldExecution();
    }
    puts("ok");
    return 0;
}

#endif /* THREE_PAGES_H */
