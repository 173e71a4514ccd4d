/*
 * staleuse: `staleuse [keep|reuse]` commits a page at 0x7F7'A0000000, marks it, hands its
 * address to stale.sys (\Device\Stale) with the METHOD_NEITHER request KEEP (0x222003),
 * frees the page (NtFreeVirtualMemory, MEM_RELEASE), then sends STAMP (0x222007): the
 * driver writes through the pointer it kept, into a page that is gone (a use after free:
 * a kernel-mode fault in the system call, bug check 0x3B).
 * With `keep` the page is not freed: the stamp lands in it. With `reuse` the app commits a
 * new page at the same address after the free (marked 0xB0B): the stale stamp lands in the
 * new allocation, and nothing faults. Both print `my page: 0x...` at the end.
 */
#include <emu/lib.h>
#include <emu/syscall.h>

#define PAGE_VA 0x7F7A0000000UL
#define IOCTL_STALE_KEEP  0x222003u
#define IOCTL_STALE_STAMP 0x222007u

int main(int argc, char **argv)
{
    void *base = (void *)PAGE_VA;
    size_t size = 4096;
    HANDLE device;
    uint64_t returned = 0;
    int keep = argc > 1 && strcmp(argv[1], "keep") == 0;
    int reuse = argc > 1 && strcmp(argv[1], "reuse") == 0;

    NtAllocateVirtualMemory(&base, &size, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE);
    volatile uint32_t *page = (volatile uint32_t *)PAGE_VA;
    *page = 0x600D;
    NTSTATUS status = NtOpenFile("\\Device\\Stale", &device);
    if (status != STATUS_SUCCESS) {
        printf("open failed 0x%08x\n", (unsigned)status);
        return 1;
    }
    status = NtDeviceIoControlFile(device, IOCTL_STALE_KEEP, (const void *)page, 4, NULL, 0,
                                   &returned);
    printf("keep: status 0x%08x\n", (unsigned)status);
    if (!keep) {
        size = 0;
        status = NtFreeVirtualMemory(&base, &size, MEM_RELEASE);
        printf("freed: status 0x%08x\n", (unsigned)status);
    }
    if (reuse) {                /* the same address, a new allocation: someone else's data */
        size = 4096;
        status = NtAllocateVirtualMemory(&base, &size, MEM_RESERVE | MEM_COMMIT,
                                         PAGE_READWRITE);
        printf("reused: status 0x%08x\n", (unsigned)status);
        *page = 0xB0B;
    }
    status = NtDeviceIoControlFile(device, IOCTL_STALE_STAMP, NULL, 0, NULL, 0, &returned);
    printf("stamp: status 0x%08x\n", (unsigned)status);
    if (keep || reuse)
        printf("my page: 0x%x\n", (unsigned)*page);
    NtClose(device);
    return 0;
}
