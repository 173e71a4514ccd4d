/*
 * The user side of the system call ABI (docs/abi.md).
 *
 * Each Nt* routine is a four-instruction stub in lib/syscall.S that loads
 * the service number into rax and executes `syscall`, as ntdll's stubs do on
 * Windows. The service numbers below must match emu.nt.syscalls.Service.
 * This header is also included by assembly (lib/syscall.S), so only the
 * numbers are visible there.
 */
#ifndef EMU_SYSCALL_H
#define EMU_SYSCALL_H

/* Service numbers: the value in rax at `syscall` (docs/abi.md, "Services"). */
#define SVC_NT_TERMINATE_PROCESS      0x00
#define SVC_NT_WRITE_CONSOLE          0x01
#define SVC_NT_GET_CURRENT_PROCESS_ID 0x02

/* NtWriteConsole refuses longer writes (docs/abi.md). */
#define NT_WRITE_CONSOLE_MAX_LENGTH   (1024 * 1024)

#ifndef __ASSEMBLER__

#include <stddef.h>
#include <stdint.h>

#include <emu/ntstatus.h>

typedef void *HANDLE;

/* The pseudo-handle -1 names the calling process, as NtCurrentProcess() does on Windows. */
#define NtCurrentProcess() ((HANDLE)(intptr_t)-1)

/*
 * Ends `process` with `exit_status`. Does not return when `process` is the
 * caller (NtCurrentProcess()); use exit() from <emu/lib.h> to flush the
 * console buffer first.
 */
NTSTATUS NtTerminateProcess(HANDLE process, NTSTATUS exit_status);

/*
 * Writes `length` bytes (at most NT_WRITE_CONSOLE_MAX_LENGTH) from `buffer`
 * to the console. A buffer that reaches the kernel half or an unmapped page
 * gives STATUS_ACCESS_VIOLATION; the caller keeps running.
 */
NTSTATUS NtWriteConsole(const void *buffer, size_t length);

/* Returns the calling process's id (a plain number, not an NTSTATUS). */
uint32_t NtGetCurrentProcessId(void);

#endif /* __ASSEMBLER__ */

#endif /* EMU_SYSCALL_H */
