/*
 * hotcold [HOT [COLD [ROUNDS]]]: a working set with a hot part and a cold scan,
 * the access pattern where a replacement policy that looks at the Accessed bit
 * (the clock) beats one that does not (FIFO). It commits HOT + COLD pages
 * (default 96 and 512), then for ROUNDS rounds (default 64) writes one word in
 * every hot page and in the next 16 cold pages (the cold pages in turn, round
 * after round). The hot pages are touched every round, so their A bit is always
 * set when the clock comes by; FIFO evicts them anyway once they are old.
 *
 * Page p's word holds the number of times the program wrote it; at the end it
 * checks every page and prints
 *     hotcold: HOT hot + COLD cold pages, ROUNDS rounds, W wrong
 * exiting 0 when W is 0; 2 for a bad argument, 3 when the commit is refused.
 */
#include <stdint.h>

#include <emu/lib.h>

#define PAGE 4096UL
#define COLD_PER_ROUND 16UL

static unsigned long number(const char *text, unsigned long fallback)
{
    char *end;
    unsigned long value;

    if (text == NULL)
        return fallback;
    value = strtoul(text, &end, 10);
    if (end == text || *end != '\0' || value == 0 || value > 65536) {
        printf("usage: hotcold [HOT [COLD [ROUNDS]]]\n");
        exit(2);
    }
    return value;
}

static volatile uint64_t *word(volatile unsigned char *base, unsigned long page)
{
    return (volatile uint64_t *)(base + page * PAGE);
}

int main(int argc, char **argv)
{
    unsigned long hot = number(argc > 1 ? argv[1] : NULL, 96);
    unsigned long cold = number(argc > 2 ? argv[2] : NULL, 512);
    unsigned long rounds = number(argc > 3 ? argv[3] : NULL, 64);
    void *base = NULL;
    size_t size = (hot + cold) * PAGE;
    NTSTATUS status = NtAllocateVirtualMemory(&base, &size, MEM_RESERVE | MEM_COMMIT,
                                              PAGE_READWRITE);
    unsigned long next_cold = 0, wrong = 0;

    if (argc > 4)
        number("", 0);
    if (!NT_SUCCESS(status)) {
        printf("hotcold: commit failed: 0x%08x\n", (unsigned)status);
        return 3;
    }
    for (unsigned long r = 0; r < rounds; r++) {
        for (unsigned long p = 0; p < hot; p++)
            *word(base, p) += 1;
        for (unsigned long i = 0; i < COLD_PER_ROUND; i++) {
            *word(base, hot + next_cold) += 1;
            next_cold = (next_cold + 1) % cold;
        }
    }
    for (unsigned long p = 0; p < hot; p++)
        wrong += *word(base, p) != rounds;
    for (unsigned long c = 0; c < cold; c++) {
        unsigned long touches = rounds * COLD_PER_ROUND / cold +
                                (c < rounds * COLD_PER_ROUND % cold);
        wrong += *word(base, hot + c) != touches;
    }
    printf("hotcold: %lu hot + %lu cold pages, %lu rounds, %lu wrong\n", hot, cold, rounds,
           wrong);
    return wrong != 0;
}
