/*
 * console: the console as an object reached through a handle. Opens
 * \Device\Console, writes a line through the handle, duplicates the handle
 * and writes through the copy, closes both; then shows that a file of the
 * guest file system is read-only (NtWriteFile: STATUS_ACCESS_DENIED) and
 * that a closed handle is dead.
 */
#include <emu/lib.h>
#include <emu/syscall.h>

static void say(HANDLE h, const char *text)
{
    uint64_t written = 0;
    NTSTATUS status = NtWriteFile(h, text, strlen(text), &written);

    if (status != STATUS_SUCCESS)
        printf("write failed 0x%08x\n", (unsigned)status);
}

int main(void)
{
    HANDLE con, copy, file;

    if (NtOpenFile("\\Device\\Console", &con) != STATUS_SUCCESS) {
        printf("open failed\n");
        return 1;
    }
    say(con, "through the console handle\n");
    NtDuplicateObject(con, &copy);
    say(copy, "through its duplicate\n");
    NtClose(con);
    NtClose(copy);
    printf("closed write 0x%08x\n", (unsigned)NtWriteFile(con, "x", 1, NULL));
    NtOpenFile("hello", &file);
    printf("file write 0x%08x\n", (unsigned)NtWriteFile(file, "x", 1, NULL));
    NtClose(file);
    return 0;
}
