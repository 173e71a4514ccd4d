/*
 * 64-bit division for 32-bit code. gcc turns a uint64_t division in i386
 * code into calls to __udivdi3 and __umoddi3, which libgcc provides; a
 * freestanding build has no libgcc, so here they are: shift-and-subtract
 * long division, one quotient bit per step.
 */
#include <stdint.h>

static uint64_t divmod(uint64_t n, uint64_t d, uint64_t *remainder)
{
    uint64_t q = 0, r = 0;

    if (d == 0)
        __builtin_trap();                /* as the hardware would: #UD instead of #DE */
    for (int bit = 63; bit >= 0; bit--) {
        r = (r << 1) | ((n >> bit) & 1);
        if (r >= d) {
            r -= d;
            q |= (uint64_t)1 << bit;
        }
    }
    *remainder = r;
    return q;
}

uint64_t __udivdi3(uint64_t n, uint64_t d)
{
    uint64_t r;
    return divmod(n, d, &r);
}

uint64_t __umoddi3(uint64_t n, uint64_t d)
{
    uint64_t r;
    divmod(n, d, &r);
    return r;
}

int64_t __divdi3(int64_t n, int64_t d)
{
    uint64_t r, q = divmod(n < 0 ? -(uint64_t)n : (uint64_t)n,
                           d < 0 ? -(uint64_t)d : (uint64_t)d, &r);
    return (n < 0) != (d < 0) ? -(int64_t)q : (int64_t)q;
}

int64_t __moddi3(int64_t n, int64_t d)
{
    uint64_t r;
    divmod(n < 0 ? -(uint64_t)n : (uint64_t)n, d < 0 ? -(uint64_t)d : (uint64_t)d, &r);
    return n < 0 ? -(int64_t)r : (int64_t)r;
}
