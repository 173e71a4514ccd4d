/*
 * slowread: `slowread DEVICE` reads from a slow device (a driver from
 * guest/drivers/slow*.c) into a page it commits at 0x7F7'93950000, the seed's
 * address, after marking the page with its own text. The read pends; the
 * device interrupts later, in whatever process is running then. Prints
 * `status 0x%08x`, `read N bytes`, and `my page: <text>`.
 */
#include <emu/lib.h>
#include <emu/syscall.h>

#define PAGE_VA 0x7F793950000UL

int main(int argc, char **argv)
{
    HANDLE device;
    uint64_t n = 0;
    void *base = (void *)PAGE_VA;
    size_t size = 4096;

    if (argc < 2) {
        printf("usage: slowread DEVICE\n");
        return 2;
    }
    NtAllocateVirtualMemory(&base, &size, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE);
    char *page = (char *)PAGE_VA;
    memcpy(page, "requester's own page", 21);
    NTSTATUS status = NtOpenFile(argv[1], &device);
    if (status != STATUS_SUCCESS) {
        printf("open failed 0x%08x\n", (unsigned)status);
        return 1;
    }
    status = NtReadFile(device, page, 64, &n);
    printf("status 0x%08x\n", (unsigned)status);
    printf("read %lu bytes\n", (unsigned long)n);
    printf("my page: %s\n", page);
    NtClose(device);
    return 0;
}
