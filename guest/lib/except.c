/*
 * The user-mode side of exception dispatch, the role ntdll's
 * KiUserExceptionDispatcher plays on Windows: the executive resumes the thread
 * here with the exception record and the faulting context on its stack.
 */
#include <emu/lib.h>
#include <emu/syscall.h>

static exception_handler user_handler;

/*
 * Entered by the executive, as if called: dispatcher(record, context). Never returns:
 * a handled exception resumes with the handler's context; an unhandled one is retried
 * with no dispatcher registered (the second chance), so the instruction faults again and
 * the executive ends the process with the full exception record, as it would have.
 */
static void dispatcher(EXCEPTION_RECORD *record, CONTEXT *context)
{
    if (user_handler == NULL || user_handler(record, context) != EXCEPTION_CONTINUE_EXECUTION) {
        console_flush();
        NtSetExceptionDispatcher(NULL);
    }
    NtContinue(context);                 /* does not return */
    for (;;)
        __builtin_trap();
}

void set_exception_handler(exception_handler handler)
{
    user_handler = handler;
    NtSetExceptionDispatcher(handler != NULL ? (void (*)(void))dispatcher : NULL);
}
