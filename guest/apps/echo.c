/*
 * echo: `echo MESSAGE` writes MESSAGE to \Device\Echo (echo.sys) and reads it
 * back: `wrote N bytes`, `read N bytes: <text>`.
 */
#include <emu/lib.h>
#include <emu/syscall.h>

int main(int argc, char **argv)
{
    HANDLE device;
    uint64_t n = 0;
    char back[65] = {0};
    const char *message = argc > 1 ? argv[1] : "hello, driver";

    NTSTATUS status = NtOpenFile("\\Device\\Echo", &device);
    if (status != STATUS_SUCCESS) {
        printf("open failed 0x%08x\n", (unsigned)status);
        return 1;
    }
    NtWriteFile(device, message, strlen(message), &n);
    printf("wrote %lu bytes\n", (unsigned long)n);
    NtReadFile(device, back, 64, &n);
    printf("read %lu bytes: %s\n", (unsigned long)n, back);
    NtClose(device);
    return 0;
}
