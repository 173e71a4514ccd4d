/*
 * seh: a process that handles its own exceptions (a structured-exception
 * handler, reduced). The executive delivers each exception to the handler
 * with the faulting context; the handler decides:
 *   - a divide error: skip the 3-byte `div rcx` and go on;
 *   - a guard page: STATUS_GUARD_PAGE_VIOLATION comes once, the guard is then
 *     gone, so retrying the same read works;
 *   - an access violation: not handled, so the process ends with 0xC0000005.
 */
#include <emu/lib.h>
#include <emu/syscall.h>

static long handler(EXCEPTION_RECORD *record, CONTEXT *context)
{
    printf("caught 0x%08x at 0x%lx\n", record->ExceptionCode,
           (unsigned long)record->ExceptionAddress);
    switch (record->ExceptionCode) {
    case STATUS_INTEGER_DIVIDE_BY_ZERO:
        context->Rip += 3;               /* past div rcx (48 f7 f1) */
        context->Rax = 42;               /* the "result" */
        return EXCEPTION_CONTINUE_EXECUTION;
    case STATUS_GUARD_PAGE_VIOLATION:
        printf("guard page at 0x%lx\n", (unsigned long)record->ExceptionInformation[1]);
        return EXCEPTION_CONTINUE_EXECUTION;    /* retry: the guard is gone now */
    default:
        return EXCEPTION_CONTINUE_SEARCH;
    }
}

static unsigned long divide_by_zero(void)
{
    unsigned long result;

    __asm__ volatile("xorl %%ecx, %%ecx\n\t"
                     "movl $1, %%eax\n\t"
                     "xorl %%edx, %%edx\n\t"
                     "divq %%rcx"            /* 48 f7 f1: #DE */
                     : "=a"(result) : : "rcx", "rdx");
    return result;
}

int main(void)
{
    set_exception_handler(handler);
    printf("after the divide: %lu\n", divide_by_zero());

    void *base = NULL;
    size_t size = 4096;
    NtAllocateVirtualMemory(&base, &size, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE | PAGE_GUARD);
    volatile unsigned long *guarded = base;
    printf("then it works: %lu\n", *guarded);

    printf("now an access violation nobody handles\n");
    volatile unsigned long *nowhere;
    __asm__("" : "=r"(nowhere) : "0"(0x10UL));      /* hide the constant from gcc */
    return (int)*nowhere;
}
