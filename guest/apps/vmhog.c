/*
 * vmhog: commits memory 1 MiB at a time, touching every page, until the
 * executive refuses. Commit is charged when it is promised, not when it is
 * touched, so the refusal is STATUS_COMMITMENT_LIMIT (0xC000012D) from
 * NtAllocateVirtualMemory, never a fault: the hog keeps running, checks its
 * pages, releases everything, shows the charge came back, and exits 0.
 */
#include <stdint.h>

#include <emu/lib.h>

#define CHUNK (1024 * 1024UL)
#define PAGE 4096UL
#define MAX_CHUNKS 4096               /* 4 GiB: more than any machine here has */

static unsigned char *chunks[MAX_CHUNKS];

int main(void)
{
    NTSTATUS status = STATUS_SUCCESS;
    size_t n = 0;

    while (n < MAX_CHUNKS) {
        void *base = NULL;
        size_t size = CHUNK;

        status = NtAllocateVirtualMemory(&base, &size, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE);
        if (!NT_SUCCESS(status))
            break;
        chunks[n] = base;
        for (size_t off = 0; off < CHUNK; off += PAGE)
            chunks[n][off] = (unsigned char)(n + off / PAGE);
        n++;
    }
    printf("vmhog: committed and touched %zu MiB, then 0x%08x\n", n, (unsigned)status);
    unsigned long bad = 0;
    for (size_t i = 0; i < n; i++)
        for (size_t off = 0; off < CHUNK; off += PAGE)
            bad += chunks[i][off] != (unsigned char)(i + off / PAGE);
    printf("vmhog: %lu pages wrong\n", bad);
    for (size_t i = 0; i < n; i++) {
        void *base = chunks[i];
        size_t size = 0;

        if (!NT_SUCCESS(NtFreeVirtualMemory(&base, &size, MEM_RELEASE)))
            bad++;
    }
    void *base = NULL;
    size_t size = CHUNK;
    status = NtAllocateVirtualMemory(&base, &size, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE);
    printf("vmhog: released everything; 1 MiB again: 0x%08x\n", (unsigned)status);
    return bad != 0;
}
