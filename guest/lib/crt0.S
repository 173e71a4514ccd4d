/*
 * crt0: the first instructions of every app; calls main, then exit.
 *
 * At _start the executive has built the System V initial stack
 * (docs/abi.md "Process start"; System V AMD64 ABI 3.4.1, figure 3.9):
 *
 *     rsp -> argc
 *            argv[0] .. argv[argc-1]
 *            NULL
 *            envp[0] .. envp[n-1]
 *            NULL
 *            auxv pairs (type, value) .. AT_NULL
 *
 * Two jobs a hosted crt0 does are not done here, on purpose:
 *   - .bss is not cleared: the loader maps it zero-filled (its PT_LOAD has
 *     p_memsz > p_filesz);
 *   - nothing is relocated: for a static PIE the loader applies the
 *     R_X86_64_RELATIVE entries at the base it chose before _start runs.
 */
    .intel_syntax noprefix
    .text
    .globl _start
    .type _start, @function
_start:
    xor ebp, ebp                    /* rbp = 0 ends the frame-pointer chain, so backtraces stop here */
    mov rdi, [rsp]                  /* argument 1: argc */
    lea rsi, [rsp + 8]              /* argument 2: argv */
    lea rdx, [rsi + rdi * 8 + 8]    /* argument 3: envp, just past argv's NULL */
    and rsp, -16                    /* the ABI wants rsp 16-byte aligned at each call (SSE spills rely on it) */
    call main
    mov edi, eax                    /* main's result is the exit status */
    call exit                       /* flushes the console, then NtTerminateProcess(-1, status) */
    ud2                             /* exit never returns: stop loudly if it does */
    .size _start, . - _start

    /* No executable stack: without this note ld assumes one is wanted. */
    .section .note.GNU-stack, "", @progbits
