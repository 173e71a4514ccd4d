/*
 * pattern [MiB [SEED]]: fills MiB (default 4) mebibytes with a position-dependent
 * pattern, then verifies every byte. Each 8-byte word depends on the seed and on
 * its own offset, so two instances with different seeds hold different bytes,
 * and a page lost (read back as zeros), mixed up with another page, or handed to
 * the wrong process is caught: run it with a pagefile and a small RAM, or two
 * instances side by side, and every page must come back as it was written.
 *
 * The whole region is committed with one NtAllocateVirtualMemory(MEM_RESERVE |
 * MEM_COMMIT, PAGE_READWRITE). Word i (i = 0 .. MiB * 131072 - 1, the word's
 * byte offset / 8) holds
 *
 *     word(i) = mix((SEED << 32 | i) mod 2^64)
 *
 * where mix is splitmix64's finalizer (all arithmetic mod 2^64):
 *
 *     z = x
 *     z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
 *     z = (z ^ (z >> 27)) * 0x94D049BB133111EB
 *     mix(x) = z ^ (z >> 31)
 *
 * The second pass reads every word back, counts the words that differ from
 * word(i), and sums what it read: checksum = (sum of all words) mod 2^64, so
 * with no bad word it is sum(word(i) for i < MiB * 131072) mod 2^64.
 *
 * Output, two lines, each written as its pass ends:
 *     pattern: seed S, N MiB written
 *     pattern: checksum 0x%016lx, W bad words
 * Exit status: 0 when no word is bad, 1 otherwise; 2 for a bad argument
 * (`usage: pattern [MiB [seed]]`); 3 when the commit is refused
 * (`pattern: commit of N MiB failed: 0x%08x`).
 */
#include <stdint.h>

#include <emu/lib.h>

#include "paging.h"

#define WORDS_PER_MIB (MIB / sizeof(uint64_t))
#define MAX_MIB 4096UL                /* more than any machine here has */

/* splitmix64's finalizer: every input bit changes about half the output bits. */
static uint64_t mix(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* What word `i` of the region holds for `seed`. */
static uint64_t word(uint64_t seed, uint64_t i)
{
    return mix(seed << 32 | i);
}

/* Parses a decimal argument; `fallback` when absent. Returns 0 on success. */
static int parse(int argc, char **argv, int index, unsigned long fallback,
                 unsigned long *value)
{
    char *end;

    if (index >= argc) {
        *value = fallback;
        return 0;
    }
    *value = strtoul(argv[index], &end, 10);
    return end == argv[index] || *end != '\0';
}

static void fill(volatile uint64_t *words, uint64_t count, uint64_t seed)
{
    for (uint64_t i = 0; i < count; i++)
        words[i] = word(seed, i);
}

/* Reads every word back: returns the number that differ, the sum of all in *checksum. */
static uint64_t verify(const volatile uint64_t *words, uint64_t count, uint64_t seed,
                       uint64_t *checksum)
{
    uint64_t bad = 0, sum = 0;

    for (uint64_t i = 0; i < count; i++) {
        uint64_t value = words[i];

        sum += value;
        bad += value != word(seed, i);
    }
    *checksum = sum;
    return bad;
}

int main(int argc, char **argv)
{
    unsigned long mib, seed;
    uint64_t checksum;

    if (parse(argc, argv, 1, 4, &mib) || parse(argc, argv, 2, 1, &seed) || mib == 0 ||
        mib > MAX_MIB || argc > 3) {
        printf("usage: pattern [MiB [seed]]\n");
        return 2;
    }
    volatile uint64_t *words = commit_mib("pattern", mib);
    uint64_t count = mib * WORDS_PER_MIB;

    fill(words, count, seed);
    printf("pattern: seed %lu, %lu MiB written\n", seed, mib);
    uint64_t bad = verify(words, count, seed, &checksum);
    printf("pattern: checksum 0x%016lx, %lu bad words\n", (unsigned long)checksum,
           (unsigned long)bad);
    return bad != 0;
}
