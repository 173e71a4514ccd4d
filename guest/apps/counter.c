/*
 * counter: `counter NAME N [WORK]` prints "NAME i" for i = 1..N, doing WORK
 * iterations (default 20000) of busy integer arithmetic before each line,
 * then exits with 0. Two counters started at once show preemption: their
 * lines interleave, and each still prints all of its own lines in order.
 * Without NAME and N it prints a usage line and exits with 2.
 */
#include <stdint.h>

#include <emu/lib.h>

#define DEFAULT_WORK 20000UL

/* Knuth's MMIX linear congruential multiplier (as in loop.c): each step needs the last. */
#define LCG_MULTIPLIER 6364136223846793005UL

/* Where the busy work's result goes, so gcc cannot drop the loop. */
static volatile uint64_t work_sink;

/* Burns about `iterations` loop turns of arithmetic with no memory traffic and no system calls. */
static void busy_work(unsigned long iterations)
{
    uint64_t x = work_sink;

    for (unsigned long i = 0; i < iterations; i++)
        x = x * LCG_MULTIPLIER + i;
    work_sink = x;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        printf("usage: counter NAME N [WORK]\n");
        return 2;
    }

    const char *name = argv[1];
    unsigned long count = strtoul(argv[2], NULL, 0);
    unsigned long work = argc > 3 ? strtoul(argv[3], NULL, 0) : DEFAULT_WORK;

    for (unsigned long i = 1; i <= count; i++) {
        busy_work(work);
        printf("%s %lu\n", name, i);
    }
    return 0;
}
