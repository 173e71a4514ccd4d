/*
 * devioctl: `devioctl DEVICE CODE [INPUT [OUTLEN]]` opens a device (e.g. \Device\Ioctl,
 * or a link such as \??\IoctlTest) and sends it one I/O control request: control code
 * CODE (decimal or 0x hex), INPUT as a C string with its terminating NUL (the input
 * buffer; none without INPUT), and an output buffer of OUTLEN bytes (default 100, at
 * most 256). Prints `status 0x%08x`, `returned N bytes`, and `output: ` followed by
 * the bytes returned (printable ASCII as is, any other byte as \xNN).
 */
#include <emu/lib.h>
#include <emu/syscall.h>

static char output[256];

int main(int argc, char **argv)
{
    HANDLE device;
    uint64_t returned = 0;

    if (argc < 3) {
        printf("usage: devioctl DEVICE CODE [INPUT [OUTLEN]]\n");
        return 2;
    }
    uint32_t code = (uint32_t)strtoul(argv[2], NULL, 0);
    const char *input = argc > 3 ? argv[3] : NULL;
    size_t length = argc > 4 ? strtoul(argv[4], NULL, 0) : 100;
    if (length > sizeof(output)) {
        printf("devioctl: OUTLEN %lu is over %lu\n", (unsigned long)length,
               (unsigned long)sizeof(output));
        return 2;
    }
    NTSTATUS status = NtOpenFile(argv[1], &device);
    if (status != STATUS_SUCCESS) {
        printf("open failed 0x%08x\n", (unsigned)status);
        return 1;
    }
    status = NtDeviceIoControlFile(device, code, input, input ? strlen(input) + 1 : 0,
                                   length ? output : NULL, length, &returned);
    printf("status 0x%08x\n", (unsigned)status);
    printf("returned %lu bytes\n", (unsigned long)returned);
    printf("output: ");
    for (uint64_t i = 0; i < returned && i < length; i++) {
        unsigned char c = (unsigned char)output[i];
        if (c >= 0x20 && c < 0x7F)
            putchar(c);
        else
            printf("\\x%02x", c);
    }
    printf("\n");
    NtClose(device);
    return 0;
}
