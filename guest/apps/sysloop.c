/*
 * sysloop: a system-call benchmark. argv[1] = calls (default 100000) of
 * NtGetCurrentProcessId, the most trivial service: each is one round trip
 * from ring 3 into the executive and back. Prints "sysloop N calls, pid P".
 */
#include <emu/lib.h>

#define DEFAULT_CALLS 100000UL

int main(int argc, char **argv)
{
    unsigned long calls = argc > 1 ? strtoul(argv[1], NULL, 0) : DEFAULT_CALLS;
    uint32_t pid = 0;

    for (unsigned long i = 0; i < calls; i++)
        pid = NtGetCurrentProcessId();
    printf("sysloop %lu calls, pid %u\n", calls, pid);
    return 0;
}
