/*
 * hello32: a 32-bit process. Runs in compatibility mode (CS = 0x23, a 32-bit
 * code segment under long mode), enters the executive with `int 0x2e`, and
 * prints its pointer size and where its stack is: below 2 GB.
 */
#include <emu/lib.h>
#include <emu/syscall.h>

int main(int argc, char **argv)
{
    int local = 0;

    printf("Hello from a 32-bit process!\n");
    printf("pointers are %u bytes, the stack is at 0x%08x\n", (unsigned)sizeof(void *),
           (unsigned)(uintptr_t)&local);
    for (int i = 1; i < argc; i++)
        printf("argv[%d] = %s\n", i, argv[i]);
    printf("pid %u\n", (unsigned)NtGetCurrentProcessId());
    return 0;
}
