/*
 * threads: two threads (NtCreateThread) each add 1 to a shared global
 * 50,000 times with an atomic read-modify-write (`lock add`), so no update
 * is lost however the scheduler preempts them. The main thread waits for
 * each thread handle (infinite), reads each exit status (a thread ends
 * with its start routine's return value: index + 10), and prints
 *
 *     counter 100000
 *     thread 0 exit 10
 *     thread 1 exit 11
 *
 * then closes the handles and exits with 0. Compare race.c, which loses
 * updates. A failing service prints "<what> failed 0x%08x" and exits with 1.
 */
#include <stdint.h>

#include <emu/lib.h>

#define THREAD_COUNT 2
#define INCREMENTS_PER_THREAD 50000
#define EXIT_STATUS_BASE 10     /* thread i returns i + 10 */

/* Shared by both threads: only touched with __atomic builtins. */
static uint64_t counter;

/* The thread routine: `argument` is the thread's index. */
static unsigned long add_atomically(void *argument)
{
    uintptr_t index = (uintptr_t)argument;

    for (int i = 0; i < INCREMENTS_PER_THREAD; i++)
        __atomic_fetch_add(&counter, 1, __ATOMIC_SEQ_CST);
    return index + EXIT_STATUS_BASE;
}

int main(void)
{
    HANDLE threads[THREAD_COUNT];
    NTSTATUS exit_status[THREAD_COUNT];
    NTSTATUS status;

    for (uintptr_t i = 0; i < THREAD_COUNT; i++) {
        status = NtCreateThread(add_atomically, (void *)i, &threads[i]);
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
        status = NtQueryExitStatus(threads[i], &exit_status[i]);
        if (!NT_SUCCESS(status)) {
            printf("query exit status failed 0x%08x\n", (unsigned)status);
            return 1;
        }
    }

    printf("counter %lu\n", (unsigned long)__atomic_load_n(&counter, __ATOMIC_SEQ_CST));
    for (int i = 0; i < THREAD_COUNT; i++)
        printf("thread %d exit %d\n", i, (int)exit_status[i]);
    for (int i = 0; i < THREAD_COUNT; i++)
        NtClose(threads[i]);
    return 0;
}
