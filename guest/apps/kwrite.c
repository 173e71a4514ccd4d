/*
 * kwrite: a ring-3 write over kernel data: the kernel code-segment descriptor
 * in the GDT (0xffff800000000010, the GDT's entry for selector 0x10). The page
 * is present and writable, but its U/S bit is clear, so the store is a #PF
 * (Intel SDM Vol. 3A 4.6, "Access Rights") and the executive ends the app
 * with STATUS_ACCESS_VIOLATION, write (1): the descriptor is untouched.
 */
#include <stdint.h>

#include <emu/lib.h>

#define KERNEL_CODE_DESCRIPTOR 0xFFFF800000000010ULL  /* GDT[2]: selector 0x10 */

int main(void)
{
    volatile uint64_t *descriptor = (volatile uint64_t *)KERNEL_CODE_DESCRIPTOR;

    printf("writing kernel memory at %p\n", (void *)descriptor);
    *descriptor = 0x41414141;
    printf("write succeeded?!\n");
    return 1;
}
