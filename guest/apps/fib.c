/*
 * fib: `fib [N]` prints fib(N) (default 6, at most 20), computed by plain
 * recursion: each call of fib() has a frame of its own and returns to its
 * caller, another fib() or main(). For `history calls fib!fib` in emu debug:
 * nested and recursive calls, each with its own argument and return value.
 */
#include <emu/lib.h>

#define DEFAULT_N 6
#define MAX_N 20

/* Not inlined, and both calls kept (no sibling-call loop), so every call is a call. */
__attribute__((noinline, optimize("no-optimize-sibling-calls")))
static unsigned long fib(unsigned long n)
{
    if (n < 2)
        return n;
    return fib(n - 1) + fib(n - 2);
}

int main(int argc, char **argv)
{
    unsigned long n = argc > 1 ? strtoul(argv[1], NULL, 0) : DEFAULT_N;

    if (n > MAX_N) {
        printf("usage: fib [N] (N at most %d)\n", MAX_N);
        return 2;
    }
    printf("fib(%lu) = %lu\n", n, fib(n));
    return 0;
}
