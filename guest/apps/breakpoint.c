/*
 * breakpoint: executes int3. #BP is a trap, so RIP already points past the
 * int3 byte; the executive reports STATUS_BREAKPOINT (0x80000003) and, with
 * no debugger attached, ends the app: "after int3" must never appear.
 */
#include <emu/lib.h>

int main(void)
{
    printf("executing int3\n");
    __asm__ volatile("int3");
    printf("after int3\n");
    return 1;
}
