/*
 * noncanon: reads 0x0000800000000000, the first non-canonical address (bits
 * 63-47 are not all equal). The CPU raises #GP(0), not #PF, and reports no
 * address (Intel SDM Vol. 3A 3.3.7.1, 6.15 "#GP"); the executive reports
 * STATUS_ACCESS_VIOLATION, as Windows does for this #GP.
 */
#include <stdint.h>

#include <emu/lib.h>

#define NONCANONICAL_ADDRESS 0x0000800000000000ULL  /* one past the top of the user half */

int main(void)
{
    volatile uint64_t *p = (volatile uint64_t *)NONCANONICAL_ADDRESS;

    printf("reading non-canonical address %p\n", (void *)p);
    (void)*p;
    printf("read succeeded?!\n");
    return 1;
}
