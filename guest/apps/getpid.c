/* getpid: prints the process id the executive gave this process. */
#include <emu/lib.h>

int main(void)
{
    printf("pid %u\n", NtGetCurrentProcessId());
    return 0;
}
