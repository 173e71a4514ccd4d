/*
 * asyncread: `asyncread DEVICE [wait]` starts an asynchronous read (NtReadFileEx)
 * into a page at 0x7F7'93950000 and goes on working while the device works (or,
 * with `wait`, waits at once, so another process is likely running when the
 * interrupt comes); then it waits on the event and prints the IO_STATUS_BLOCK:
 * `started 0x%08x`, `working`, `done 0x%08x, N bytes`, `my page: <text>`.
 */
#include <emu/lib.h>
#include <emu/syscall.h>

#define PAGE_VA 0x7F793950000UL

int main(int argc, char **argv)
{
    HANDLE device, event;
    IO_STATUS_BLOCK io = {0};
    void *base = (void *)PAGE_VA;
    size_t size = 4096;

    if (argc < 2 || NtOpenFile(argv[1], &device) != STATUS_SUCCESS) {
        printf("usage: asyncread DEVICE (a device that exists)\n");
        return 2;
    }
    NtAllocateVirtualMemory(&base, &size, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE);
    char *page = (char *)PAGE_VA;
    NtCreateEvent(&event, 1, 0);
    NTSTATUS status = NtReadFileEx(device, event, page, 64, &io);
    printf("started 0x%08x\n", (unsigned)status);
    volatile unsigned long work = 0;
    int busy = !(argc > 2 && strcmp(argv[2], "wait") == 0);
    for (unsigned long i = 0; busy && i < 100000; i++)
        work += i;
    printf("working\n");
    NtWaitForSingleObject(event, INFINITE_WAIT);
    printf("done 0x%08x, %lu bytes\n", (unsigned)io.Status, (unsigned long)io.Information);
    printf("my page: %s\n", page);
    return 0;
}
