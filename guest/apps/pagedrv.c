/*
 * pagedrv MODE: asks \Device\PagedPool (pagedpool.sys) to sum pageable memory after
 * pushing everything pageable out to the pagefile, at PASSIVE_LEVEL (fine: the
 * page faults are serviced) or at DISPATCH_LEVEL (bug check 0xD1).
 *
 * Each mode first sends the three memory-list commands (as `listcmd all` does):
 * NtSetSystemInformation(SystemMemoryListInformation) with MemoryEmptyWorkingSets,
 * MemoryFlushModifiedList, then MemoryPurgeStandbyList; a refused command prints
 * `pagedrv: <empty|flush|purge> 0x%08x` and the mode goes on. Then:
 *
 *   passive       IOCTL 0x800 (CTL_CODE 0x222003): the driver sums its 12288 bytes
 *                 of PagedPool at PASSIVE_LEVEL; prints
 *                 `pagedrv: passive sum 0x%016lx` (expected 0x000000000017e800).
 *   dispatch      IOCTL 0x801 (0x222007): the same at DISPATCH_LEVEL. Expected: bug
 *                 check 0xD1, nothing more printed; if it returns, prints
 *                 `pagedrv: dispatch sum 0x%016lx`.
 *   user-passive  commits a 4096-byte buffer (byte i = i & 0xFF) BEFORE the
 *   user-dispatch commands (so the buffer's page goes to the pagefile too), then
 *                 IOCTL 0x803 (0x22200F) / 0x802 (0x22200B) with it as the input:
 *                 the driver reads the user page directly at PASSIVE_LEVEL / at
 *                 DISPATCH_LEVEL (bug check 0xD1 expected); prints
 *                 `pagedrv: user sum 0x%016lx` (expected 16 * 32640 = 0x7f800).
 *
 * Exit status: 0 when the request succeeded; 1 when it failed
 * (`pagedrv: ioctl 0x%08x failed: 0x%08x`); 2 for a bad mode
 * (`usage: pagedrv passive|dispatch|user-passive|user-dispatch`); 3 when the
 * device cannot be opened (`pagedrv: cannot open \Device\PagedPool: 0x%08x`,
 * e.g. without --driver pagedpool.sys) or the buffer not committed
 * (`pagedrv: commit failed: 0x%08x`).
 */
#include <stdint.h>

#include <emu/lib.h>

#include "paging.h"

#define CODE(function) ((0x22u << 16) | ((function) << 2) | 3)   /* METHOD_NEITHER */
#define IOCTL_PAGED_SUM_PASSIVE  CODE(0x800)
#define IOCTL_PAGED_SUM_DISPATCH CODE(0x801)
#define IOCTL_USER_SUM_DISPATCH  CODE(0x802)
#define IOCTL_USER_SUM_PASSIVE   CODE(0x803)

#define USER_BYTES 4096

static const struct {
    const char *mode;
    uint32_t code;
    int user;                            /* sums our own buffer, not the driver's pool */
    const char *label;
} modes[] = {
    {"passive", IOCTL_PAGED_SUM_PASSIVE, 0, "passive sum"},
    {"dispatch", IOCTL_PAGED_SUM_DISPATCH, 0, "dispatch sum"},
    {"user-passive", IOCTL_USER_SUM_PASSIVE, 1, "user sum"},
    {"user-dispatch", IOCTL_USER_SUM_DISPATCH, 1, "user sum"},
};

/* Everything pageable out of RAM: empty the working sets, flush, purge. */
static void page_out_everything(void)
{
    for (size_t i = 0; i < MEMORY_LIST_COMMANDS; i++) {
        uint32_t command = memory_list_commands[i].command;
        NTSTATUS status = NtSetSystemInformation(SystemMemoryListInformation, &command,
                                                 sizeof command);

        if (!NT_SUCCESS(status))
            printf("pagedrv: %s 0x%08x\n", memory_list_commands[i].name, (unsigned)status);
    }
}

/* A committed USER_BYTES buffer, byte i = i & 0xFF; exits 3 if refused. */
static unsigned char *user_buffer(void)
{
    void *base = NULL;
    size_t size = USER_BYTES;
    NTSTATUS status = NtAllocateVirtualMemory(&base, &size, MEM_RESERVE | MEM_COMMIT,
                                              PAGE_READWRITE);
    unsigned char *bytes = base;

    if (!NT_SUCCESS(status)) {
        printf("pagedrv: commit failed: 0x%08x\n", (unsigned)status);
        exit(3);
    }
    for (size_t i = 0; i < USER_BYTES; i++)
        bytes[i] = (unsigned char)(i & 0xFF);
    return bytes;
}

static int usage(void)
{
    printf("usage: pagedrv passive|dispatch|user-passive|user-dispatch\n");
    return 2;
}

int main(int argc, char **argv)
{
    size_t m = 0;
    HANDLE device;
    NTSTATUS status;
    unsigned char *input = NULL;
    uint64_t sum = 0, returned = 0;

    while (argc == 2 && m < sizeof modes / sizeof modes[0] && strcmp(argv[1], modes[m].mode))
        m++;
    if (argc != 2 || m == sizeof modes / sizeof modes[0])
        return usage();
    status = NtOpenFile("\\Device\\PagedPool", &device);
    if (status != STATUS_SUCCESS) {
        printf("pagedrv: cannot open \\Device\\PagedPool: 0x%08x\n", (unsigned)status);
        return 3;
    }
    if (modes[m].user)
        input = user_buffer();
    page_out_everything();
    status = NtDeviceIoControlFile(device, modes[m].code, input, input ? USER_BYTES : 0, &sum,
                                   sizeof sum, &returned);
    NtClose(device);
    if (status != STATUS_SUCCESS || returned != sizeof sum) {
        printf("pagedrv: ioctl 0x%08x failed: 0x%08x\n", (unsigned)modes[m].code,
               (unsigned)status);
        return 1;
    }
    printf("pagedrv: %s 0x%016lx\n", modes[m].label, (unsigned long)sum);
    return 0;
}
