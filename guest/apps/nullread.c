/*
 * nullread: reads a qword at address 0. Nothing maps the first page (the
 * executive keeps it free, as Windows keeps the first 64 KiB), so the read
 * is a #PF: STATUS_ACCESS_VIOLATION, read (0), at 0.
 */
#include <stdint.h>

#include <emu/lib.h>

/*
 * The address comes from a volatile variable: a literal NULL dereference is
 * undefined behaviour, and gcc -O2 would replace it with ud2
 * (-fisolate-erroneous-paths-dereference) instead of the load we want.
 */
static volatile uintptr_t null_address = 0;

int main(void)
{
    volatile uint64_t *p = (volatile uint64_t *)null_address;

    printf("reading address 0\n");
    (void)*p;
    printf("read succeeded?!\n");
    return 1;
}
