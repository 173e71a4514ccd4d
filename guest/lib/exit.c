/* Process exit: the one way out of an app, used by crt0 after main returns. */
#include <emu/lib.h>

/*
 * Flushes the console buffer, then ends the calling process with `status`
 * (docs/abi.md: NtTerminateProcess(-1, status) does not return). If it
 * returns anyway the executive broke its contract: stop with ud2 rather
 * than run on.
 */
void exit(int status)
{
    console_flush();
    NtTerminateProcess(NtCurrentProcess(), status);
    for (;;)
        __builtin_trap();
}
