/*
 * rowrite: writes to a const global. The linker puts it in .rodata, whose
 * segment is mapped read-only (link/app.ld), so the write is a #PF on a
 * present page: STATUS_ACCESS_VIOLATION, write (1), at its address.
 */
#include <emu/lib.h>

/* Initialised and const: gcc places it in .rodata. */
const int read_only_value = 42;

int main(void)
{
    /* Casting const away makes the write undefined in C, which is the point; volatile keeps it. */
    volatile int *p = (volatile int *)&read_only_value;

    printf("writing read-only data at %p\n", (void *)p);
    *p = 1;
    printf("write succeeded?! value %d\n", read_only_value);
    return 1;
}
