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
SYSCALL_STUB NtDeviceIoControlFile, SVC_NT_DEVICE_IO_CONTROL_FILE
SYSCALL_STUB NtReadFileEx,          SVC_NT_READ_FILE_EX
SYSCALL_STUB NtAllocateVirtualMemory, SVC_NT_ALLOCATE_VIRTUAL_MEMORY
SYSCALL_STUB NtFreeVirtualMemory,   SVC_NT_FREE_VIRTUAL_MEMORY
SYSCALL_STUB NtProtectVirtualMemory, SVC_NT_PROTECT_VIRTUAL_MEMORY
SYSCALL_STUB NtQueryVirtualMemory,  SVC_NT_QUERY_VIRTUAL_MEMORY
SYSCALL_STUB NtSetExceptionDispatcher, SVC_NT_SET_EXCEPTION_DISPATCHER
SYSCALL_STUB NtContinue,            SVC_NT_CONTINUE
SYSCALL_STUB NtSetSystemInformation, SVC_NT_SET_SYSTEM_INFORMATION

    /* No executable stack: without this note ld assumes one is wanted. */
    .section .note.GNU-stack, "", @progbits
