/*
 * illegal: executes ud2, the instruction defined to be undefined (Intel SDM
 * Vol. 2B, UD): #UD, which the executive reports as
 * STATUS_ILLEGAL_INSTRUCTION (0xC000001D).
 */
#include <emu/lib.h>

int main(void)
{
    printf("executing ud2\n");
    __asm__ volatile("ud2");
    printf("ud2 succeeded?!\n");
    return 1;
}
