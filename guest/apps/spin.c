/*
 * spin: never ends on its own and makes no system call, so only the
 * emulator's instruction budget (or a timer interrupt) can stop it.
 * A loop whose condition is a constant may not be assumed to end
 * (C11 6.8.5p6), so gcc keeps it: one `jmp` to itself.
 */
int main(void)
{
    for (;;)
        ;
}
