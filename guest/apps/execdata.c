/*
 * execdata: calls a function it wrote into .data. The data segment is
 * mapped with NX set (link/app.ld gives it R W, no X), so fetching the
 * first byte is a #PF with the I/D bit: STATUS_ACCESS_VIOLATION, execute
 * (8), at the array's address (Intel SDM Vol. 3A 4.6, 4.7).
 */
#include <emu/lib.h>

#define X86_RET 0xC3            /* RET (near), Intel SDM Vol. 2B */

/* Initialised, so it lands in .data rather than .bss. */
unsigned char data_code[16] = { X86_RET };

int main(void)
{
    void (*function)(void) = (void (*)(void))data_code;

    printf("calling code in .data at %p\n", (void *)data_code);
    function();
    printf("execution succeeded?!\n");
    return 1;
}
