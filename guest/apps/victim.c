/*
 * victim: an innocent process with its own page at 0x7F7'93950000 (the same
 * address as slowread's, in another address space). It marks the page, works
 * for a while (the slow device's interrupt arrives while it runs), then prints
 * what its page holds: `my page: <text>`. With a driver that writes a user
 * address from its DPC (neither I/O), the text is no longer its own.
 */
#include <emu/lib.h>
#include <emu/syscall.h>

#define PAGE_VA 0x7F793950000UL

int main(void)
{
    void *base = (void *)PAGE_VA;
    size_t size = 4096;

    NtAllocateVirtualMemory(&base, &size, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE);
    char *page = (char *)PAGE_VA;
    memcpy(page, "victim's own data, nobody else's", 33);
    volatile unsigned long work = 0;
    for (unsigned long i = 0; i < 200000; i++)      /* about a million instructions */
        work += i;
    printf("my page: %s\n", page);
    return 0;
}
