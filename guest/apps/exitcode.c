/*
 * exitcode: exits with the status given as argv[1] (`exitcode 42` exits
 * with 42), or 3 without an argument, so a test can check that main's
 * result reaches NtTerminateProcess and the executive's report.
 */
#include <emu/lib.h>

int main(int argc, char **argv)
{
    if (argc < 2)
        return 3;
    return atoi(argv[1]);
}
