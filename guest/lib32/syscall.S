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

/*
 * SYSCALL_STUB7: a service with a 7th argument (NtDeviceIoControlFile). The
 * executive reads it as a quadword at [esp + 8] at the `int 0x2e`, where a
 * 64-bit stub's caller leaves it (docs/abi.md): the stub puts it there,
 * zero-extended, below two scratch dwords.
 */
.macro SYSCALL_STUB7 name, number
    .text
    .globl \name
    .type \name, @function
\name:
    push ebp
    push edi
    push esi
    push ebx
    push 0                          /* the 7th argument's high dword */
    push dword ptr [esp + 48]       /* its low dword: 5 pushes + return address + 6 args */
    sub esp, 8                      /* [esp + 8] is now the 7th argument */
    mov ebx, [esp + 36]             /* 8 dwords below the return address */
    mov ecx, [esp + 40]
    mov edx, [esp + 44]
    mov esi, [esp + 48]
    mov edi, [esp + 52]
    mov ebp, [esp + 56]
    mov eax, \number
    int 0x2e
    add esp, 16
    pop ebx
    pop esi
    pop edi
    pop ebp
    ret
    .size \name, . - \name
.endm

/* Every service of lib/syscall.S, in the same order (tests/guest checks that they match). */
SYSCALL_STUB NtTerminateProcess,    SVC_NT_TERMINATE_PROCESS
SYSCALL_STUB NtWriteConsole,        SVC_NT_WRITE_CONSOLE
SYSCALL_STUB NtGetCurrentProcessId, SVC_NT_GET_CURRENT_PROCESS_ID
SYSCALL_STUB NtClose,               SVC_NT_CLOSE
SYSCALL_STUB NtDuplicateObject,     SVC_NT_DUPLICATE_OBJECT
SYSCALL_STUB NtWaitForSingleObject, SVC_NT_WAIT_FOR_SINGLE_OBJECT
SYSCALL_STUB NtYieldExecution,      SVC_NT_YIELD_EXECUTION
SYSCALL_STUB NtDelayExecution,      SVC_NT_DELAY_EXECUTION
SYSCALL_STUB NtCreateProcess,       SVC_NT_CREATE_PROCESS
SYSCALL_STUB NtCreateThread,        SVC_NT_CREATE_THREAD
SYSCALL_STUB NtTerminateThread,     SVC_NT_TERMINATE_THREAD
SYSCALL_STUB NtCreateEvent,         SVC_NT_CREATE_EVENT
SYSCALL_STUB NtSetEvent,            SVC_NT_SET_EVENT
SYSCALL_STUB NtResetEvent,          SVC_NT_RESET_EVENT
SYSCALL_STUB NtOpenFile,            SVC_NT_OPEN_FILE
SYSCALL_STUB NtReadFile,            SVC_NT_READ_FILE
SYSCALL_STUB NtQueryExitStatus,     SVC_NT_QUERY_EXIT_STATUS
SYSCALL_STUB NtGetCurrentThreadId,  SVC_NT_GET_CURRENT_THREAD_ID
SYSCALL_STUB NtWriteFile,           SVC_NT_WRITE_FILE
SYSCALL_STUB7 NtDeviceIoControlFile, SVC_NT_DEVICE_IO_CONTROL_FILE
SYSCALL_STUB NtReadFileEx,          SVC_NT_READ_FILE_EX
SYSCALL_STUB NtAllocateVirtualMemory, SVC_NT_ALLOCATE_VIRTUAL_MEMORY
SYSCALL_STUB NtFreeVirtualMemory,   SVC_NT_FREE_VIRTUAL_MEMORY
SYSCALL_STUB NtProtectVirtualMemory, SVC_NT_PROTECT_VIRTUAL_MEMORY
SYSCALL_STUB NtQueryVirtualMemory,  SVC_NT_QUERY_VIRTUAL_MEMORY
SYSCALL_STUB NtSetExceptionDispatcher, SVC_NT_SET_EXCEPTION_DISPATCHER
SYSCALL_STUB NtContinue,            SVC_NT_CONTINUE
SYSCALL_STUB NtSetSystemInformation, SVC_NT_SET_SYSTEM_INFORMATION

    .section .note.GNU-stack, "", @progbits
