/*
 * services32: the services a 64-bit app has, from a 32-bit process (int 0x2e,
 * lib32/syscall.S). Prints one line per call, the NTSTATUS in hex:
 *   allocate, free (NtFreeVirtualMemory MEM_RELEASE), query (the freed range
 *   is MEM_FREE 0x10000 again), top-down (MEM_TOP_DOWN gives a base above the
 *   bottom-up one), protect (the old protection), yield (NtYieldExecution),
 *   delay, event (create, set, wait: signalled), thread (NtCreateThread, wait,
 *   its exit status), duplicate, open and read (a guest file), write (the console),
 *   and with `ioctl` as argv[1], \Device\Ioctl's buffered transfer (needs ioctl.sys).
 */
#include <emu/lib.h>
#include <emu/syscall.h>

static unsigned long worker(void *argument)
{
    return (unsigned long)argument + 1;
}

static void show(const char *what, NTSTATUS status)
{
    printf("%s: 0x%08x\n", what, (unsigned)status);
}

static void memory(void)
{
    uint64_t base = 0, size = 0x10000, low;
    MEMORY_BASIC_INFORMATION info;
    uint32_t old = 0;

    show("allocate", NtAllocateVirtualMemory((void **)&base, (size_t *)&size,
                                             MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE));
    low = base;
    *(volatile unsigned *)(uintptr_t)base = 42;
    show("protect", NtProtectVirtualMemory((void **)&base, (size_t *)&size, PAGE_READONLY,
                                           &old));
    printf("old protection: 0x%x\n", (unsigned)old);
    size = 0;                    /* MEM_RELEASE frees the whole allocation: size 0 */
    show("free", NtFreeVirtualMemory((void **)&base, (size_t *)&size, MEM_RELEASE));
    show("query", NtQueryVirtualMemory((void *)(uintptr_t)low, &info));
    printf("state after free: 0x%x\n", (unsigned)info.State);
    base = 0, size = 0x10000;
    show("top-down", NtAllocateVirtualMemory((void **)&base, (size_t *)&size,
                                             MEM_RESERVE | MEM_COMMIT | MEM_TOP_DOWN,
                                             PAGE_READWRITE));
    printf("top-down above bottom-up: %s\n", base > low ? "yes" : "no");
}

static void objects(void)
{
    HANDLE event, thread, copy, file, console;
    NTSTATUS exit_status = 0;
    char buffer[16] = {0};
    uint64_t count = 0;

    show("yield", NtYieldExecution());
    show("delay", NtDelayExecution(1000));
    show("event", NtCreateEvent(&event, 1, 0));
    show("set", NtSetEvent(event));
    show("wait event", NtWaitForSingleObject(event, 0));
    show("reset", NtResetEvent(event));
    show("wait reset event", NtWaitForSingleObject(event, 0));
    show("thread", NtCreateThread(worker, (void *)41, &thread));
    show("wait thread", NtWaitForSingleObject(thread, 1000000));
    show("exit status", NtQueryExitStatus(thread, &exit_status));
    printf("thread returned %u, thread id nonzero: %s\n", (unsigned)exit_status,
           NtGetCurrentThreadId() ? "yes" : "no");
    show("duplicate", NtDuplicateObject(event, &copy));
    show("close", NtClose(copy));
    show("open", NtOpenFile("services32", &file));
    show("read", NtReadFile(file, buffer, 4, &count));
    printf("read %u bytes: %s\n", (unsigned)count, buffer[1] == 'E' ? "ELF" : "?");
    show("open console", NtOpenFile("\\Device\\Console", &console));
    show("write", NtWriteFile(console, "written\n", 8, &count));
}

static void ioctl(void)
{
    HANDLE device;
    char out[65] = {0};
    uint64_t returned = 0;

    show("open device", NtOpenFile("\\Device\\Ioctl", &device));
    show("ioctl", NtDeviceIoControlFile(device, (0x22u << 16) | (0x800 << 2), "stressed", 8,
                                        out, 64, &returned));
    printf("ioctl: %s (%u bytes)\n", out, (unsigned)returned);
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "ioctl") == 0) {
        ioctl();
        return 0;
    }
    memory();
    objects();
    return 0;
}
