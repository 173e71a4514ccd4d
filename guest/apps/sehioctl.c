/*
 * sehioctl: `sehioctl DEVICE CODE [ADDRESS [LENGTH]]` sends I/O control CODE to DEVICE with
 * ADDRESS as its input buffer (default: the text "hello, seh", LENGTH its length) and a
 * 64-byte output buffer, then prints `status 0x%08x` and, on success, `output: <text>`.
 * With METHOD_NEITHER the driver gets ADDRESS as it is: a kernel address, an unmapped one...
 * what does the driver's __try/__except make of it? (peseh.sys)
 */
#include <emu/lib.h>
#include <emu/syscall.h>

static const char text[] = "hello, seh";

int main(int argc, char **argv)
{
    HANDLE device;
    char out[65] = {0};
    uint64_t returned = 0;

    if (argc < 3) {
        printf("usage: sehioctl DEVICE CODE [ADDRESS [LENGTH]]\n");
        return 2;
    }
    uint32_t code = (uint32_t)strtoul(argv[2], NULL, 0);
    const char *in = argc > 3 ? (const char *)strtoul(argv[3], NULL, 0) : text;
    size_t length = argc > 4 ? strtoul(argv[4], NULL, 0) : sizeof(text) - 1;
    NTSTATUS status = NtOpenFile(argv[1], &device);
    if (status != STATUS_SUCCESS) {
        printf("open failed 0x%08x\n", (unsigned)status);
        return 1;
    }
    status = NtDeviceIoControlFile(device, code, in, length, out, 64, &returned);
    printf("status 0x%08x\n", (unsigned)status);
    if (status == STATUS_SUCCESS)
        printf("output: %s\n", out);
    NtClose(device);
    return 0;
}
