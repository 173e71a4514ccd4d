/*
 * System call stubs: the user side of docs/abi.md.
 *
 * Each stub is shaped like an ntdll stub on Windows: arguments arrive in
 * the System V registers (rdi, rsi, rdx, rcx, r8, r9); `syscall` wants the
 * same ones except rcx, which the instruction overwrites with the return
 * RIP (Intel SDM Vol. 2B, SYSCALL), so argument 4 moves to r10. The result
 * comes back in rax. rcx and r11 are clobbered, which the System V ABI
 * already treats as caller-saved, so the stubs save nothing.
 */
#include <emu/syscall.h>

    .intel_syntax noprefix

/* SYSCALL_STUB name, number: defines the function `name` that calls service `number`. */
.macro SYSCALL_STUB name, number
    .text
    .globl \name
    .type \name, @function
\name:
    mov r10, rcx                    /* argument 4: syscall will overwrite rcx */
    mov eax, \number                /* the service number */
    syscall
    ret
    .size \name, . - \name
.endm

SYSCALL_STUB NtTerminateProcess,    SVC_NT_TERMINATE_PROCESS
SYSCALL_STUB NtWriteConsole,        SVC_NT_WRITE_CONSOLE
SYSCALL_STUB NtGetCurrentProcessId, SVC_NT_GET_CURRENT_PROCESS_ID

    /* No executable stack: without this note ld assumes one is wanted. */
    .section .note.GNU-stack, "", @progbits
