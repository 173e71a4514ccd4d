/*
 * waiter: a thread blocks on an auto-reset event until the main thread
 * sets it. The thread prints "thread waiting", waits (infinite), prints
 * "thread woke" and returns 7. The main thread yields (NtYieldExecution)
 * until the thread has announced itself, plus a few more times so the
 * thread is really blocked, then sets the event, waits for the thread and
 * reads its exit status. The output is always, in this order:
 *
 *     thread waiting
 *     main setting event
 *     thread woke
 *     thread exit 7
 *
 * and the app exits with 0. (If the thread had not reached its wait yet,
 * the event would stay signalled until it did: the order of the lines
 * would still hold.) A failing service prints "<what> failed 0x%08x" and
 * exits with 1.
 */
#include <stdint.h>

#include <emu/lib.h>

#define THREAD_EXIT_STATUS 7
#define EXTRA_YIELDS 3          /* after "thread waiting", so the thread reaches its wait */
#define MAX_YIELDS 100000       /* give up if the thread never runs */

static HANDLE event;
static volatile int thread_started;    /* set by the thread after its first line */

static unsigned long wait_for_event(void *argument)
{
    (void)argument;
    printf("thread waiting\n");
    thread_started = 1;

    NTSTATUS status = NtWaitForSingleObject(event, INFINITE_WAIT);

    if (status != STATUS_SUCCESS) {
        printf("thread wait failed 0x%08x\n", (unsigned)status);
        return 1;
    }
    printf("thread woke\n");
    return THREAD_EXIT_STATUS;
}

/* Gives the processor away until the thread has printed its first line; 0 if it never does. */
static int yield_until_thread_started(void)
{
    for (int i = 0; i < MAX_YIELDS && !thread_started; i++)
        NtYieldExecution();
    if (!thread_started)
        return 0;
    for (int i = 0; i < EXTRA_YIELDS; i++)
        NtYieldExecution();
    return 1;
}

int main(void)
{
    HANDLE thread;
    NTSTATUS exit_status;
    NTSTATUS status = NtCreateEvent(&event, 0 /* auto-reset */, 0 /* not signalled */);

    if (!NT_SUCCESS(status)) {
        printf("create event failed 0x%08x\n", (unsigned)status);
        return 1;
    }
    status = NtCreateThread(wait_for_event, NULL, &thread);
    if (!NT_SUCCESS(status)) {
        printf("create thread failed 0x%08x\n", (unsigned)status);
        return 1;
    }
    if (!yield_until_thread_started()) {
        printf("thread never ran?!\n");
        return 1;
    }

    printf("main setting event\n");
    status = NtSetEvent(event);
    if (!NT_SUCCESS(status)) {
        printf("set event failed 0x%08x\n", (unsigned)status);
        return 1;
    }
    status = NtWaitForSingleObject(thread, INFINITE_WAIT);
    if (status != STATUS_SUCCESS) {
        printf("wait failed 0x%08x\n", (unsigned)status);
        return 1;
    }
    status = NtQueryExitStatus(thread, &exit_status);
    if (!NT_SUCCESS(status)) {
        printf("query exit status failed 0x%08x\n", (unsigned)status);
        return 1;
    }
    printf("thread exit %d\n", (int)exit_status);
    NtClose(thread);
    NtClose(event);
    return 0;
}
