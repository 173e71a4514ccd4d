/*
 * reader: `reader PATH` opens a file of the guest file system (NtOpenFile),
 * reads it in 100-byte chunks (NtReadFile) until STATUS_END_OF_FILE, and
 * prints its size and the sum of its bytes:
 *
 *     read <bytes> bytes
 *     sum <sum of all bytes, each 0-255>
 *
 * Then it opens the file again and reads into address 0x10, which nothing
 * maps: the executive refuses the buffer and the app lives on:
 *
 *     bad buffer 0xc0000005
 *
 * (For an empty file the executive may answer 0xc0000011, end of file,
 * instead.) Exits with 0. If the file cannot be opened it prints "open
 * failed 0x%08x" (0xc0000034 for no such file) and exits with 1; another
 * read error prints "read failed 0x%08x" and exits with 1; without PATH it
 * prints a usage line and exits with 2.
 */
#include <stdint.h>

#include <emu/lib.h>

#define CHUNK_SIZE 100
#define BAD_BUFFER ((void *)0x10)   /* in the first page, which is never mapped */

/* Reads `file` to its end, adding up its length and bytes; returns the failing status or success. */
static NTSTATUS read_all(HANDLE file, uint64_t *total, unsigned long *sum)
{
    unsigned char chunk[CHUNK_SIZE];

    for (;;) {
        uint64_t got = 0;
        NTSTATUS status = NtReadFile(file, chunk, sizeof chunk, &got);

        if (status == STATUS_END_OF_FILE)
            return STATUS_SUCCESS;
        if (!NT_SUCCESS(status))
            return status;
        if (got == 0)           /* success with nothing read: also the end */
            return STATUS_SUCCESS;
        for (uint64_t i = 0; i < got && i < sizeof chunk; i++)
            *sum += chunk[i];
        *total += got;
    }
}

/* Opens `path` afresh (at offset 0, so there is data to copy) and reads into an unmapped buffer. */
static NTSTATUS read_into_bad_buffer(const char *path)
{
    HANDLE file;
    uint64_t got = 0;
    NTSTATUS status = NtOpenFile(path, &file);

    if (!NT_SUCCESS(status))
        return status;
    status = NtReadFile(file, BAD_BUFFER, CHUNK_SIZE, &got);
    NtClose(file);
    return status;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        printf("usage: reader PATH\n");
        return 2;
    }

    const char *path = argv[1];
    HANDLE file;
    uint64_t total = 0;
    unsigned long sum = 0;
    NTSTATUS status = NtOpenFile(path, &file);

    if (!NT_SUCCESS(status)) {
        printf("open failed 0x%08x\n", (unsigned)status);
        return 1;
    }
    status = read_all(file, &total, &sum);
    NtClose(file);
    if (!NT_SUCCESS(status)) {
        printf("read failed 0x%08x\n", (unsigned)status);
        return 1;
    }
    printf("read %llu bytes\n", (unsigned long long)total);
    printf("sum %lu\n", sum);
    printf("bad buffer 0x%08x\n", (unsigned)read_into_bad_buffer(path));
    return 0;
}
