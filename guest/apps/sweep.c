/*
 * sweep: a memory benchmark. Touches one byte in each 4 KiB page of a
 * 64 MiB .bss buffer, round after round: argv[1] = pages (default 16384,
 * the whole buffer), argv[2] = rounds (default 8). Every touch of a new
 * page is a TLB miss for the emulator's MMU (and, the first time, a demand-
 * zero page fault). Prints a checksum that depends on every touch.
 */
#include <stdint.h>

#include <emu/lib.h>

#define PAGE_SIZE 4096UL
#define BUFFER_PAGES 16384UL    /* 64 MiB */
#define DEFAULT_ROUNDS 8UL

/* In .bss: no bytes in the file, zero pages from the loader. */
static unsigned char buffer[BUFFER_PAGES * PAGE_SIZE];

/* Adds round + 1 to the first byte of each page and returns the sum of what it read. */
static unsigned long touch_pages(unsigned long pages, unsigned long round)
{
    unsigned long sum = 0;

    for (unsigned long page = 0; page < pages; page++) {
        volatile unsigned char *byte = &buffer[page * PAGE_SIZE];

        *byte += (unsigned char)(round + 1);
        sum += *byte;
    }
    return sum;
}

int main(int argc, char **argv)
{
    unsigned long pages = argc > 1 ? strtoul(argv[1], NULL, 0) : BUFFER_PAGES;
    unsigned long rounds = argc > 2 ? strtoul(argv[2], NULL, 0) : DEFAULT_ROUNDS;
    unsigned long checksum = 0;

    if (pages > BUFFER_PAGES) {
        printf("sweep: at most %lu pages\n", BUFFER_PAGES);
        return 2;
    }
    for (unsigned long round = 0; round < rounds; round++)
        checksum = checksum * 31 + touch_pages(pages, round);
    printf("sweep checksum %lu\n", checksum);
    return 0;
}
