/*
 * badread: a ring-3 read of kernel memory. The kernel half's pages have the
 * U/S bit clear, so the read is a #PF (Intel SDM Vol. 3A 4.6, "Access
 * Rights") and the executive ends the app with STATUS_ACCESS_VIOLATION,
 * read (0), at 0xffff800000001000.
 */
#include <stdint.h>

#include <emu/lib.h>

#define KERNEL_ADDRESS 0xFFFF800000001000ULL  /* the second page of the kernel half */

int main(void)
{
    volatile uint64_t *kernel = (volatile uint64_t *)KERNEL_ADDRESS;

    printf("reading kernel memory at %p\n", (void *)kernel);
    (void)*kernel;              /* volatile: the load is emitted although the value is unused */
    printf("read succeeded?!\n");
    return 1;
}
