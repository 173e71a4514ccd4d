/*
 * stackoverflow: recurses until the stack runs into the guard page below
 * it, 1 KiB per call. The executive reports STATUS_STACK_OVERFLOW
 * (0xC00000FD) rather than a plain access violation, as Windows does when
 * a thread touches its last guard page.
 */
#include <emu/lib.h>

#define FRAME_BYTES 1024

/* The recursion is endless on purpose. */
#pragma GCC diagnostic ignored "-Winfinite-recursion"

/*
 * Not a tail call (the result is used after the call returns) and not
 * inlinable, so every level really takes FRAME_BYTES of stack; volatile
 * makes gcc keep the array.
 */
__attribute__((noinline)) static unsigned long recurse(unsigned long depth)
{
    volatile unsigned char frame[FRAME_BYTES];

    frame[depth % FRAME_BYTES] = (unsigned char)depth;
    return recurse(depth + 1) + frame[depth % FRAME_BYTES];
}

int main(void)
{
    printf("recursing with %d-byte frames until the stack overflows\n", FRAME_BYTES);
    printf("returned?! %lu\n", recurse(0));
    return 1;
}
