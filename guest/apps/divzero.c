/*
 * divzero: an integer division by zero. idiv raises #DE (Intel SDM Vol. 2A,
 * IDIV), reported as STATUS_INTEGER_DIVIDE_BY_ZERO (0xC0000094).
 */
#include <emu/lib.h>

/* Volatile, so gcc cannot fold the division or drop it as undefined. */
static volatile int dividend = 1;
static volatile int divisor = 0;

int main(void)
{
    int quotient;

    printf("dividing %d by %d\n", dividend, divisor);
    quotient = dividend / divisor;
    printf("division succeeded?! quotient %d\n", quotient);
    return 1;
}
