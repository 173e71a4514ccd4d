/*
 * hello: the smallest useful app. Prints a greeting, then each argument,
 * and exits with 0. Built twice: build/apps/hello (ET_EXEC at 0x400000)
 * and build/apps/hello-pie (a static PIE the loader relocates).
 */
#include <emu/lib.h>

int main(int argc, char **argv)
{
    printf("Hello, world!\n");
    for (int i = 1; i < argc; i++)
        printf("argv[%d] = %s\n", i, argv[i]);
    return 0;
}
