/*
 * staleuse: `staleuse [keep]` commits a page at 0x7F7'A0000000, marks it, hands its address
 * to stale.sys (\Device\Stale) with the METHOD_NEITHER request KEEP (0x222003), frees the
 * page (NtFreeVirtualMemory, MEM_RELEASE), then sends STAMP (0x222007): the driver writes
 * through the pointer it kept, into a page that is gone (a use after free: bug check 0x50).
 * With `keep` the page is not freed: the stamp lands in it and the app prints
 * `my page: 0x...`.
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
    status = NtDeviceIoControlFile(device, IOCTL_STALE_STAMP, NULL, 0, NULL, 0, &returned);
    printf("stamp: status 0x%08x\n", (unsigned)status);
    if (keep)
        printf("my page: 0x%x\n", (unsigned)*page);
    NtClose(device);
    return 0;
}
