/*
 * System call stubs for 32-bit apps: `int 0x2e`, as 32-bit Windows entered
 * its kernel. Service number in eax; arguments 1-6 in ebx, ecx, edx, esi,
 * edi, ebp (docs/abi.md, "32-bit processes"); the result in eax. The cdecl
 * arguments are on the stack; ebx, esi, edi and ebp are callee-saved, so the
 * stub keeps them.
 */
#include <emu/syscall.h>

    .intel_syntax noprefix

.macro SYSCALL_STUB name, number
    .text
    .globl \name
    .type \name, @function
\name:
    push ebp
    push edi
    push esi
    push ebx
    mov ebx, [esp + 20]             /* 4 saved registers + the return address */
    mov ecx, [esp + 24]
    mov edx, [esp + 28]
    mov esi, [esp + 32]
    mov edi, [esp + 36]
    mov ebp, [esp + 40]
    mov eax, \number
    int 0x2e
    pop ebx
    pop esi
    pop edi
    pop ebp
    ret
    .size \name, . - \name
.endm

SYSCALL_STUB NtTerminateProcess,    SVC_NT_TERMINATE_PROCESS
SYSCALL_STUB NtWriteConsole,        SVC_NT_WRITE_CONSOLE
SYSCALL_STUB NtGetCurrentProcessId, SVC_NT_GET_CURRENT_PROCESS_ID
SYSCALL_STUB NtClose,               SVC_NT_CLOSE
SYSCALL_STUB NtAllocateVirtualMemory, SVC_NT_ALLOCATE_VIRTUAL_MEMORY
SYSCALL_STUB NtQueryVirtualMemory,  SVC_NT_QUERY_VIRTUAL_MEMORY
SYSCALL_STUB NtSetSystemInformation, SVC_NT_SET_SYSTEM_INFORMATION

    .section .note.GNU-stack, "", @progbits
