/*
 * reread [MiB]: pages are written to the pagefile only when dirty. It commits
 * MiB mebibytes (default 4), writes every word of every page (so every page is
 * dirty once), then reads the whole region twice without writing it again.
 * With a pagefile and less RAM than the region, writing and pass 1 push pages
 * out; in pass 2 a page that was read back in from the pagefile and never
 * written since is still clean: evicting it again needs no pagefile write, its
 * copy there is still good. Compare the pagefile writes between the lines.
 *
 * Word i (i = 0 .. MiB * 131072 - 1, the word's byte offset / 8) holds
 *     (i + 1) * 0x9E3779B97F4A7C15 mod 2^64
 * (never zero, so a page lost and read back as zeros shows in the sums).
 *
 * Output, each line written (flushed: the console is line buffered) as its
 * phase ends:
 *     reread: written
 *     reread: pass 1 sum 0x%016lx
 *     reread: pass 2 sum 0x%016lx
 * where a sum is that of every word mod 2^64: with every page intact,
 * 0x9E3779B97F4A7C15 * W * (W + 1) / 2 mod 2^64, W = MiB * 131072 (for 4 MiB,
 * 0xd0357fc9f0540000). Exit status: 0 when both sums equal the sum of what was
 * written, 1 otherwise; 2 for a bad argument (`usage: reread [MiB]`); 3 when
 * the commit is refused (`reread: commit of N MiB failed: 0x%08x`).
 */
#include <stdint.h>

#include <emu/lib.h>

#include "paging.h"

#define WORDS_PER_MIB (MIB / sizeof(uint64_t))
#define MAX_MIB 4096UL                /* more than any machine here has */
#define GOLDEN 0x9E3779B97F4A7C15ULL  /* 2^64 / the golden ratio: neighbours differ a lot */

/* Writes every word; returns the sum of what it wrote. */
static uint64_t fill(volatile uint64_t *words, uint64_t count)
{
    uint64_t sum = 0;

    for (uint64_t i = 0; i < count; i++) {
        uint64_t value = (i + 1) * GOLDEN;

        words[i] = value;
        sum += value;
    }
    return sum;
}

/* Reads every word (and writes none); returns their sum. */
static uint64_t read_all(const volatile uint64_t *words, uint64_t count)
{
    uint64_t sum = 0;

    for (uint64_t i = 0; i < count; i++)
        sum += words[i];
    return sum;
}

int main(int argc, char **argv)
{
    unsigned long mib = 4;
    char *end;

    if (argc > 1) {
        mib = strtoul(argv[1], &end, 10);
        if (end == argv[1] || *end != '\0')
            mib = 0;
    }
    if (mib == 0 || mib > MAX_MIB || argc > 2) {
        printf("usage: reread [MiB]\n");
        return 2;
    }
    volatile uint64_t *words = commit_mib("reread", mib);
    uint64_t count = mib * WORDS_PER_MIB;

    uint64_t expected = fill(words, count);
    printf("reread: written\n");
    uint64_t first = read_all(words, count);
    printf("reread: pass 1 sum 0x%016lx\n", (unsigned long)first);
    uint64_t second = read_all(words, count);
    printf("reread: pass 2 sum 0x%016lx\n", (unsigned long)second);
    return !(first == expected && second == expected);
}
