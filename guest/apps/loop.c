/*
 * loop: a compute-bound benchmark. argv[1] = iterations (default 100000000)
 * of a tight integer loop with no memory traffic and no system calls; the
 * result is printed so gcc cannot drop the loop.
 */
#include <stdint.h>

#include <emu/lib.h>

#define DEFAULT_ITERATIONS 100000000UL

/* Knuth's MMIX linear congruential multiplier: each step depends on the last. */
#define LCG_MULTIPLIER 6364136223846793005UL

int main(int argc, char **argv)
{
    unsigned long iterations = argc > 1 ? strtoul(argv[1], NULL, 0) : DEFAULT_ITERATIONS;
    uint64_t x = 1;

    for (unsigned long i = 0; i < iterations; i++)
        x = x * LCG_MULTIPLIER + i;
    printf("loop result %lu\n", x);
    return 0;
}
