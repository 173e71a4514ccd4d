/*
 * ioctl: `ioctl TEXT` asks \Device\Ioctl (ioctl.sys) to reverse TEXT with each
 * transfer method, and with an unknown control code:
 * `buffered: <text> (N bytes)`, `direct: ...`, `neither: ...`, `unknown: 0x%08x`.
 */
#include <emu/lib.h>
#include <emu/syscall.h>

#define CODE(function, method) ((0x22u << 16) | ((function) << 2) | (method))

static void ask(HANDLE device, const char *label, uint32_t code, const char *text)
{
    char out[65] = {0};
    uint64_t returned = 0;
    NTSTATUS status = NtDeviceIoControlFile(device, code, text, strlen(text), out, 64,
                                            &returned);

    if (status != STATUS_SUCCESS)
        printf("%s: 0x%08x\n", label, (unsigned)status);
    else
        printf("%s: %s (%lu bytes)\n", label, out, (unsigned long)returned);
}

int main(int argc, char **argv)
{
    HANDLE device;
    const char *text = argc > 1 ? argv[1] : "stressed";

    if (NtOpenFile("\\Device\\Ioctl", &device) != STATUS_SUCCESS) {
        printf("open failed\n");
        return 1;
    }
    ask(device, "buffered", CODE(0x800, 0), text);
    ask(device, "direct", CODE(0x801, 2), text);
    ask(device, "neither", CODE(0x802, 3), text);
    ask(device, "unknown", CODE(0x8FF, 0), text);
    NtClose(device);
    return 0;
}
