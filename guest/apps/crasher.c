/*
 * crasher: `crasher KIND` prints "crasher KIND", then dies of one fault:
 *
 *     read    read 0xffff800000001000 (kernel half)  STATUS_ACCESS_VIOLATION 0xc0000005, read
 *     write0  write to address 0                     STATUS_ACCESS_VIOLATION 0xc0000005, write
 *     exec    call a byte in .data (NX)              STATUS_ACCESS_VIOLATION 0xc0000005, execute
 *     priv    hlt at ring 3                          STATUS_PRIVILEGED_INSTRUCTION 0xc0000096
 *     ud      ud2                                    STATUS_ILLEGAL_INSTRUCTION 0xc000001d
 *     div     idiv by 0                              STATUS_INTEGER_DIVIDE_BY_ZERO 0xc0000094
 *     int3    int3                                   STATUS_BREAKPOINT 0x80000003
 *
 * The fault ends this process only: run beside `counter`, the counter
 * still prints all of its lines. "KIND succeeded?!" (exit 1) means the
 * fault did not happen; an unknown KIND prints a usage line (exit 2).
 */
#include <stdint.h>

#include <emu/lib.h>

#define KERNEL_ADDRESS 0xFFFF800000001000ULL  /* the second page of the kernel half */
#define X86_RET 0xC3                          /* RET (near), Intel SDM Vol. 2B */

/* Volatile, so gcc emits the access or the division instead of folding it (see nullread.c). */
static volatile uintptr_t kernel_address = KERNEL_ADDRESS;
static volatile uintptr_t null_address = 0;
static volatile int dividend = 1;
static volatile int divisor = 0;

/* Initialised, so it lands in .data (R W, no X) rather than .bss. */
unsigned char crasher_data_code[16] = { X86_RET };

static void fault_read(void)
{
    (void)*(volatile uint64_t *)kernel_address;
}

static void fault_write0(void)
{
    *(volatile uint64_t *)null_address = 1;
}

static void fault_exec(void)
{
    ((void (*)(void))crasher_data_code)();
    __asm__ volatile("");       /* keeps it a call: no tail jump, so the fault has a return address */
}

static void fault_priv(void) { __asm__ volatile("hlt"); }
static void fault_ud(void) { __asm__ volatile("ud2"); }
static void fault_int3(void) { __asm__ volatile("int3"); }

static void fault_div(void)
{
    dividend = dividend / divisor;
}

struct fault_kind {
    const char *name;
    void (*provoke)(void);
};

static const struct fault_kind kinds[] = {
    { "read", fault_read },
    { "write0", fault_write0 },
    { "exec", fault_exec },
    { "priv", fault_priv },
    { "ud", fault_ud },
    { "div", fault_div },
    { "int3", fault_int3 },
};

#define KIND_COUNT (sizeof kinds / sizeof kinds[0])

static const struct fault_kind *find_kind(const char *name)
{
    for (size_t i = 0; i < KIND_COUNT; i++) {
        if (strcmp(kinds[i].name, name) == 0)
            return &kinds[i];
    }
    return NULL;
}

static int usage(void)
{
    printf("usage: crasher [");
    for (size_t i = 0; i < KIND_COUNT; i++)
        printf("%s%s", i > 0 ? "|" : "", kinds[i].name);
    printf("]\n");
    return 2;
}

int main(int argc, char **argv)
{
    const struct fault_kind *kind = argc > 1 ? find_kind(argv[1]) : NULL;

    if (kind == NULL)
        return usage();
    printf("crasher %s\n", kind->name);
    kind->provoke();
    printf("%s succeeded?!\n", kind->name);
    return 1;
}
