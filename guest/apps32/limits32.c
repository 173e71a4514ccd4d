/*
 * limits32: the 2 GB limit of a 32-bit process. argv[1] selects:
 *   alloc  (default) asks NtAllocateVirtualMemory for memory at 0x80000000
 *          and prints the status (the executive refuses: user space ends
 *          at 0x7FFEFFFF), then prints `still alive`;
 *   touch  reads 0x80000000: nothing can ever be mapped there for a 32-bit
 *          process, so it dies with an access violation.
 */
#include <emu/lib.h>
#include <emu/syscall.h>

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "touch") == 0) {
        printf("reading 0x80000000\n");
        volatile unsigned *above = (volatile unsigned *)0x80000000u;
        printf("read 0x%08x?!\n", *above);
        return 1;
    }
    uint64_t base = 0x80000000u, size = 0x10000;
    NTSTATUS status = NtAllocateVirtualMemory((void **)&base, (size_t *)&size,
                                              MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE);
    printf("allocate at 0x80000000: 0x%08x\n", (unsigned)status);
    printf("still alive\n");
    return 0;
}
