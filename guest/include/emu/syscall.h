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
#define SVC_NT_CLOSE                  0x03
#define SVC_NT_DUPLICATE_OBJECT       0x04
#define SVC_NT_WAIT_FOR_SINGLE_OBJECT 0x05
#define SVC_NT_YIELD_EXECUTION        0x06
#define SVC_NT_DELAY_EXECUTION        0x07
#define SVC_NT_CREATE_PROCESS         0x08
#define SVC_NT_CREATE_THREAD          0x09
#define SVC_NT_TERMINATE_THREAD       0x0A
#define SVC_NT_CREATE_EVENT           0x0B
#define SVC_NT_SET_EVENT              0x0C
#define SVC_NT_RESET_EVENT            0x0D
#define SVC_NT_OPEN_FILE              0x0E
#define SVC_NT_READ_FILE              0x0F
#define SVC_NT_QUERY_EXIT_STATUS      0x10
#define SVC_NT_GET_CURRENT_THREAD_ID  0x11
#define SVC_NT_WRITE_FILE             0x12
#define SVC_NT_DEVICE_IO_CONTROL_FILE 0x13
#define SVC_NT_READ_FILE_EX           0x14
#define SVC_NT_SET_SYSTEM_INFORMATION 0x15
#define SVC_NT_ALLOCATE_VIRTUAL_MEMORY 0x20
#define SVC_NT_FREE_VIRTUAL_MEMORY    0x21
#define SVC_NT_PROTECT_VIRTUAL_MEMORY 0x22
#define SVC_NT_QUERY_VIRTUAL_MEMORY   0x23
#define SVC_NT_SET_EXCEPTION_DISPATCHER 0x24
#define SVC_NT_CONTINUE               0x25

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

/* The pseudo-handle -2 names the calling thread, as NtCurrentThread() does on Windows. */
#define NtCurrentThread() ((HANDLE)(intptr_t)-2)
#define INFINITE_WAIT ((int64_t)-1)

/* Objects and handles (docs/abi.md, services 0x03-0x11). */
NTSTATUS NtClose(HANDLE handle);
NTSTATUS NtDuplicateObject(HANDLE handle, HANDLE *duplicate);
NTSTATUS NtWaitForSingleObject(HANDLE handle, int64_t timeout_instructions);
NTSTATUS NtYieldExecution(void);
NTSTATUS NtDelayExecution(uint64_t instructions);
NTSTATUS NtCreateProcess(const char *path, const char *arguments, HANDLE *process);
NTSTATUS NtCreateThread(unsigned long (*start)(void *), void *argument, HANDLE *thread);
NTSTATUS NtTerminateThread(HANDLE thread, NTSTATUS exit_status);
NTSTATUS NtCreateEvent(HANDLE *event, int manual_reset, int initial_state);
NTSTATUS NtSetEvent(HANDLE event);
NTSTATUS NtResetEvent(HANDLE event);
NTSTATUS NtOpenFile(const char *path, HANDLE *file);
NTSTATUS NtReadFile(HANDLE file, void *buffer, size_t length, uint64_t *bytes_read);
NTSTATUS NtQueryExitStatus(HANDLE process_or_thread, NTSTATUS *exit_status);
uint32_t NtGetCurrentThreadId(void);
/* Only the console ("\\Device\\Console", opened with NtOpenFile) can be written. */
NTSTATUS NtWriteFile(HANDLE file, const void *buffer, size_t length, uint64_t *written);
typedef struct {                 /* IO_STATUS_BLOCK: how an I/O request ended */
    NTSTATUS Status;
    uint32_t Pad;
    uint64_t Information;        /* bytes transferred */
} IO_STATUS_BLOCK;

/* An asynchronous read of a device: STATUS_PENDING now if it takes time; then `io` is
 * filled and `event` (0: none) set when it completes. */
NTSTATUS NtReadFileEx(HANDLE device, HANDLE event, void *buffer, size_t length,
                      IO_STATUS_BLOCK *io);
/* An I/O control request to a device (IRP_MJ_DEVICE_CONTROL); `returned` gets the bytes out. */
NTSTATUS NtDeviceIoControlFile(HANDLE device, uint32_t code, const void *input,
                               uint32_t input_length, void *output, uint32_t output_length,
                               uint64_t *returned);

/* Virtual memory (docs/abi.md, services 0x20-0x23; winnt.h values). */
#define MEM_COMMIT   0x1000
#define MEM_RESERVE  0x2000
#define MEM_DECOMMIT 0x4000
#define MEM_RELEASE  0x8000
#define MEM_TOP_DOWN 0x100000     /* NtAllocateVirtualMemory: the highest free range */
#define MEM_FREE     0x10000
#define MEM_PRIVATE  0x20000
#define PAGE_NOACCESS          0x01
#define PAGE_READONLY          0x02
#define PAGE_READWRITE         0x04
#define PAGE_EXECUTE           0x10
#define PAGE_EXECUTE_READ      0x20
#define PAGE_EXECUTE_READWRITE 0x40
#define PAGE_GUARD             0x100

typedef struct {                 /* winnt.h MEMORY_BASIC_INFORMATION */
    void *BaseAddress;
    void *AllocationBase;
    uint32_t AllocationProtect;
#ifdef __x86_64__                /* x64 layout: 48 bytes */
    uint16_t PartitionId;
    uint64_t RegionSize;
#else                            /* MEMORY_BASIC_INFORMATION32: 28 bytes */
    uint32_t RegionSize;
#endif
    uint32_t State;
    uint32_t Protect;
    uint32_t Type;
} MEMORY_BASIC_INFORMATION;

NTSTATUS NtAllocateVirtualMemory(void **base, size_t *size, uint32_t type, uint32_t protect);
NTSTATUS NtFreeVirtualMemory(void **base, size_t *size, uint32_t free_type);
NTSTATUS NtProtectVirtualMemory(void **base, size_t *size, uint32_t protect,
                                uint32_t *old_protect);
NTSTATUS NtQueryVirtualMemory(const void *address, MEMORY_BASIC_INFORMATION *info);

/* User-mode exception dispatch (services 0x24-0x25; docs/abi.md). */
typedef struct {                 /* winnt.h EXCEPTION_RECORD64 */
    uint32_t ExceptionCode;
    uint32_t ExceptionFlags;
    uint64_t ExceptionRecord;
    uint64_t ExceptionAddress;
    uint32_t NumberParameters;
    uint32_t Reserved;
    uint64_t ExceptionInformation[15];
} EXCEPTION_RECORD;

typedef struct {                 /* this machine's CONTEXT (docs/abi.md): 408 bytes */
    uint64_t Rax, Rbx, Rcx, Rdx, Rsi, Rdi, Rbp, Rsp;
    uint64_t R8, R9, R10, R11, R12, R13, R14, R15;
    uint64_t Rip, EFlags;
    uint8_t Xmm[16][16];
    uint64_t MxCsr;
} CONTEXT;

NTSTATUS NtSetExceptionDispatcher(void (*dispatcher)(void));
NTSTATUS NtContinue(const void *context);

/*
 * System information (service 0x15). One class: SystemMemoryListInformation,
 * whose buffer is a 4-byte SYSTEM_MEMORY_LIST_COMMAND, the commands RAMMap
 * sends on Windows: take every page out of every working set (they stay in
 * RAM, in transition), write the modified list to the pagefile, or give the
 * standby list's frames back to the free list (their pages are then only in
 * the pagefile).
 */
#define SystemMemoryListInformation 80
#define MemoryEmptyWorkingSets      2
#define MemoryFlushModifiedList     3
#define MemoryPurgeStandbyList      4
NTSTATUS NtSetSystemInformation(uint32_t information_class, const void *buffer,
                                uint32_t length);

#endif /* __ASSEMBLER__ */

#endif /* EMU_SYSCALL_H */
