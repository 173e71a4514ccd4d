/*
 * devread: `devread DEVICE [LENGTH [ADDRESS]]` opens a device a driver created (e.g.
 * \Device\Buffered) and reads from it: an IRP_MJ_READ to the driver. Prints
 * `status 0x%08x`, `read N bytes`, and the bytes as text (`data: ...`). With ADDRESS,
 * the read goes there instead of into its own buffer (e.g. a kernel address: what
 * does the driver do with it?).
 */
#include <emu/lib.h>
#include <emu/syscall.h>

static char buffer[256];

int main(int argc, char **argv)
{
    HANDLE device;
    uint64_t n = 0;

    if (argc < 2) {
        printf("usage: devread DEVICE [LENGTH]\n");
        return 2;
    }
    size_t length = argc > 2 ? strtoul(argv[2], NULL, 0) : sizeof(buffer) - 1;
    char *target = argc > 3 ? (char *)strtoul(argv[3], NULL, 0) : buffer;
    NTSTATUS status = NtOpenFile(argv[1], &device);
    if (status != STATUS_SUCCESS) {
        printf("open failed 0x%08x\n", (unsigned)status);
        return 1;
    }
    status = NtReadFile(device, target, length, &n);
    printf("status 0x%08x\n", (unsigned)status);
    printf("read %lu bytes\n", (unsigned long)n);
    if (target == buffer)
        printf("data: %s\n", buffer);
    NtClose(device);
    return 0;
}
