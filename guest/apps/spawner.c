/*
 * spawner: `spawner APP [ARGS...]` starts APP as a new process
 * (NtCreateProcess, its ARGS joined with single spaces as the command
 * line, or NULL when there are none), waits for it to end (NtWaitForSingleObject
 * on the process handle, infinite), reads its exit status and exits with 0:
 *
 *     spawned APP
 *     APP exited 0x%08x
 *
 * APP's own output appears between the two lines. A child killed by a
 * fault shows the exception code as its status (0xc0000005, ...). If
 * NtCreateProcess fails (0xc0000034 no such file, 0xc000007b not an image
 * the loader takes) it prints "create failed 0x%08x" and exits with 1.
 * Without APP, or with arguments longer than its buffer, it prints a
 * usage line and exits with 2.
 */
#include <emu/lib.h>

#define COMMAND_LINE_SIZE 1024

/* Joins argv[first..argc-1] with single spaces into `line`; returns 0 if they do not fit. */
static int join_arguments(char *line, size_t size, int argc, char **argv, int first)
{
    size_t length = 0;

    line[0] = '\0';
    for (int i = first; i < argc; i++) {
        size_t part = strlen(argv[i]);
        size_t separator = i > first ? 1 : 0;

        if (length + separator + part + 1 > size)
            return 0;
        if (separator)
            line[length++] = ' ';
        memcpy(line + length, argv[i], part);
        length += part;
        line[length] = '\0';
    }
    return 1;
}

int main(int argc, char **argv)
{
    static char command_line[COMMAND_LINE_SIZE];

    if (argc < 2 || !join_arguments(command_line, sizeof command_line, argc, argv, 2)) {
        printf("usage: spawner APP [ARGS...] (arguments up to %d bytes)\n",
               COMMAND_LINE_SIZE - 1);
        return 2;
    }

    const char *app = argv[1];
    const char *arguments = argc > 2 ? command_line : NULL;
    HANDLE process;
    NTSTATUS exit_status;
    NTSTATUS status = NtCreateProcess(app, arguments, &process);

    if (!NT_SUCCESS(status)) {
        printf("create failed 0x%08x\n", (unsigned)status);
        return 1;
    }
    printf("spawned %s\n", app);

    status = NtWaitForSingleObject(process, INFINITE_WAIT);
    if (status != STATUS_SUCCESS) {
        printf("wait failed 0x%08x\n", (unsigned)status);
        return 1;
    }
    status = NtQueryExitStatus(process, &exit_status);
    if (!NT_SUCCESS(status)) {
        printf("query exit status failed 0x%08x\n", (unsigned)status);
        return 1;
    }
    printf("%s exited 0x%08x\n", app, (unsigned)exit_status);
    NtClose(process);
    return 0;
}
