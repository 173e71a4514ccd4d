/*
 * nullwrite: writes 1 to address 0. The first page is unmapped, so the
 * write is a #PF: STATUS_ACCESS_VIOLATION, write (1), at 0.
 */
#include <stdint.h>

#include <emu/lib.h>

/* A volatile variable hides the NULL from gcc (see nullread.c). */
static volatile uintptr_t null_address = 0;

int main(void)
{
    volatile uint64_t *p = (volatile uint64_t *)null_address;

    printf("writing address 0\n");
    *p = 1;
    printf("write succeeded?!\n");
    return 1;
}
