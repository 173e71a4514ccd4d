/*
 * kexec: a ring-3 call into kernel code: the executive's iretq trampoline at
 * 0xffff800000001000. The page is present and executable, but its U/S bit is
 * clear, so the instruction fetch is a #PF (Intel SDM Vol. 3A 4.6) and the
 * executive ends the app with STATUS_ACCESS_VIOLATION, execute (8).
 */
#include <stdint.h>

#include <emu/lib.h>

#define KERNEL_CODE 0xFFFF800000001000ULL    /* the kernel's text page */

typedef void (*routine)(void);

int main(void)
{
    routine kernel = (routine)KERNEL_CODE;

    printf("calling kernel code at %p\n", (void *)kernel);
    kernel();
    printf("call returned?!\n");
    return 1;
}
