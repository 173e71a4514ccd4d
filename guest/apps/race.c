/*
 * race: threads.c without the atomic. Two threads each do
 * `counter = counter + 1` 50,000 times as a plain load, a short delay, and
 * a store. The emulator runs one thread at a time but preempts between any
 * two instructions: a thread preempted after its load stores a stale value
 * when it resumes, wiping out every increment the other thread made in the
 * meantime. The delay widens that window so the loss is easy to see.
 * Prints
 *
 *     counter N
 *     lost K
 *
 * with N + K = 100000 (N = 100000 only if no preemption fell inside a
 * window), and exits with 0. A failing service prints "<what> failed
 * 0x%08x" and exits with 1.
 */
#include <stdint.h>

#include <emu/lib.h>

#define THREAD_COUNT 2
#define INCREMENTS_PER_THREAD 50000
#define DELAY_TURNS 8           /* loop turns between the load and the store */

/* volatile: every `counter + 1` is a real load and a real store, never a register copy. */
static volatile int counter;

/* A few instructions of nothing: the window in which preemption loses updates. */
static void short_delay(void)
{
    for (int i = 0; i < DELAY_TURNS; i++)
        __asm__ volatile("");   /* an empty statement gcc may not delete or merge */
}

/* The thread routine: a non-atomic read-modify-write, on purpose. */
static unsigned long add_racily(void *argument)
{
    (void)argument;
    for (int i = 0; i < INCREMENTS_PER_THREAD; i++) {
        int value = counter;    /* load */
        short_delay();
        counter = value + 1;    /* store: stale if the other thread ran since the load */
    }
    return 0;
}

int main(void)
{
    HANDLE threads[THREAD_COUNT];
    NTSTATUS status;

    for (int i = 0; i < THREAD_COUNT; i++) {
        status = NtCreateThread(add_racily, NULL, &threads[i]);
        if (!NT_SUCCESS(status)) {
            printf("create thread failed 0x%08x\n", (unsigned)status);
            return 1;
        }
    }
    for (int i = 0; i < THREAD_COUNT; i++) {
        status = NtWaitForSingleObject(threads[i], INFINITE_WAIT);
        if (status != STATUS_SUCCESS) {
            printf("wait failed 0x%08x\n", (unsigned)status);
            return 1;
        }
    }

    int final = counter;

    printf("counter %d\n", final);
    printf("lost %d\n", THREAD_COUNT * INCREMENTS_PER_THREAD - final);
    for (int i = 0; i < THREAD_COUNT; i++)
        NtClose(threads[i]);
    return 0;
}
