/*
 * yielder: `yielder N` calls NtYieldExecution N times (default 1000), then
 * prints "yielded N" and exits with 0. A context-switch benchmark: two
 * yielders on one machine hand the processor to each other at every
 * yield, so the run makes about 2N thread switches.
 */
#include <emu/lib.h>

#define DEFAULT_YIELDS 1000UL

int main(int argc, char **argv)
{
    unsigned long yields = argc > 1 ? strtoul(argv[1], NULL, 0) : DEFAULT_YIELDS;

    for (unsigned long i = 0; i < yields; i++)
        NtYieldExecution();
    printf("yielded %lu\n", yields);
    return 0;
}
