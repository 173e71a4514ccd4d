/*
 * devbench: `devbench DEVICE N` reads from DEVICE N times (one IRP each) and
 * prints `reads N, last status 0x%08x`: the I/O round-trip benchmark (make bench).
 */
#include <emu/lib.h>
#include <emu/syscall.h>

static char buffer[64];

int main(int argc, char **argv)
{
    HANDLE device;
    uint64_t n;
    NTSTATUS status = 0;

    if (argc < 3) {
        printf("usage: devbench DEVICE N\n");
        return 2;
    }
    unsigned long count = strtoul(argv[2], NULL, 0);
    if (NtOpenFile(argv[1], &device) != STATUS_SUCCESS) {
        printf("open failed\n");
        return 1;
    }
    for (unsigned long i = 0; i < count; i++)
        status = NtReadFile(device, buffer, sizeof(buffer), &n);
    printf("reads %lu, last status 0x%08x\n", count, (unsigned)status);
    return 0;
}
