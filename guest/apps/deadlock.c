/*
 * deadlock: waits forever on an event nobody will ever set. With no other
 * thread able to run, the machine has nothing left to do: `emu run` stops
 * with "deadlock" (exit status 123) instead of hanging.
 */
#include <emu/lib.h>
#include <emu/syscall.h>

int main(void)
{
    HANDLE event;
    NTSTATUS status = NtCreateEvent(&event, 0, 0);

    if (status != STATUS_SUCCESS) {
        printf("create failed 0x%08x\n", (unsigned)status);
        return 1;
    }
    printf("waiting forever\n");
    NtWaitForSingleObject(event, INFINITE_WAIT);
    printf("woke?!\n");
    return 1;
}
