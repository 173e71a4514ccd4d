/*
 * threadcrash: a fault in one thread ends the whole process. A second
 * thread spins (printing nothing); once it is running, the main thread
 * prints "main faulting" and writes to address 0. The executive must end
 * the process, both threads, with STATUS_ACCESS_VIOLATION (0xc0000005,
 * write, at 0). If the spinning thread survived it would finish its loop
 * and print "thread survived?!"; a failing NtCreateThread prints "create
 * thread failed 0x%08x" and exits with 1.
 */
#include <stdint.h>

#include <emu/lib.h>

#define SPIN_TURNS 50000000UL   /* far longer than the main thread needs to fault */
#define MAX_YIELDS 100000       /* give up if the thread never runs */

static volatile uintptr_t null_address = 0;     /* hides the NULL from gcc (see nullread.c) */
static volatile int thread_running;

/* Spins for a long time without a system call: only the process's end can stop it early. */
static unsigned long spin(void *argument)
{
    (void)argument;
    thread_running = 1;
    for (unsigned long i = 0; i < SPIN_TURNS; i++)
        __asm__ volatile("");   /* an empty statement gcc may not delete */
    printf("thread survived?!\n");
    return 1;
}

int main(void)
{
    HANDLE thread;
    NTSTATUS status = NtCreateThread(spin, NULL, &thread);

    if (!NT_SUCCESS(status)) {
        printf("create thread failed 0x%08x\n", (unsigned)status);
        return 1;
    }
    /* Let the thread start, so there really are two threads when the fault comes. */
    for (int i = 0; i < MAX_YIELDS && !thread_running; i++)
        NtYieldExecution();

    printf("main faulting\n");
    *(volatile uint64_t *)null_address = 1;
    printf("write succeeded?!\n");
    return 1;
}
