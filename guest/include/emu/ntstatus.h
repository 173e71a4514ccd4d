/*
 * NTSTATUS values the guest apps see or provoke.
 *
 * An NTSTATUS is a 32-bit signed value: bits 31-30 give the severity
 * (00 success, 01 informational, 10 warning, 11 error), so every error is
 * negative and NT_SUCCESS() is a sign test ([MS-ERREF] 2.3, "NTSTATUS").
 * The numbers are Windows' own (ntstatus.h, [MS-ERREF] 2.3.1), so a status
 * printed by an app can be looked up in Microsoft's documentation.
 */
#ifndef EMU_NTSTATUS_H
#define EMU_NTSTATUS_H

#include <stdint.h>

typedef int32_t NTSTATUS;

/* True for success and informational values, false for warnings and errors. */
#define NT_SUCCESS(status) ((NTSTATUS)(status) >= 0)

#define STATUS_SUCCESS                ((NTSTATUS)0x00000000) /* it worked */
#define STATUS_GUARD_PAGE_VIOLATION   ((NTSTATUS)0x80000001) /* first touch of a guard page */
#define STATUS_BREAKPOINT             ((NTSTATUS)0x80000003) /* int3 (#BP) */
#define STATUS_ACCESS_VIOLATION       ((NTSTATUS)0xC0000005) /* #PF, #GP on memory, bad pointer */
#define STATUS_INVALID_HANDLE         ((NTSTATUS)0xC0000008) /* a handle the process does not own */
#define STATUS_INVALID_PARAMETER      ((NTSTATUS)0xC000000D) /* an argument out of range */
#define STATUS_INVALID_SYSTEM_SERVICE ((NTSTATUS)0xC000001C) /* unknown service number in rax */
#define STATUS_ILLEGAL_INSTRUCTION    ((NTSTATUS)0xC000001D) /* #UD, e.g. ud2 */
#define STATUS_INTEGER_DIVIDE_BY_ZERO ((NTSTATUS)0xC0000094) /* #DE from div/idiv by 0 */
#define STATUS_PRIVILEGED_INSTRUCTION ((NTSTATUS)0xC0000096) /* #GP from cli, hlt, ... at ring 3 */
#define STATUS_STACK_OVERFLOW         ((NTSTATUS)0xC00000FD) /* ran into the stack's guard page */
#define STATUS_TIMEOUT                ((NTSTATUS)0x00000102) /* a wait timed out */
#define STATUS_PENDING                ((NTSTATUS)0x00000103) /* still running / not done */
#define STATUS_END_OF_FILE            ((NTSTATUS)0xC0000011) /* read at the end of a file */
#define STATUS_NO_MEMORY              ((NTSTATUS)0xC0000017) /* no memory for the request */
#define STATUS_CONFLICTING_ADDRESSES  ((NTSTATUS)0xC0000018) /* the range is already reserved */
#define STATUS_OBJECT_TYPE_MISMATCH   ((NTSTATUS)0xC0000024) /* a handle to the wrong kind of object */
#define STATUS_NOT_COMMITTED          ((NTSTATUS)0xC000002D) /* the range is not committed */
#define STATUS_OBJECT_NAME_NOT_FOUND  ((NTSTATUS)0xC0000034) /* no such file in the guest file system */
#define STATUS_QUOTA_EXCEEDED         ((NTSTATUS)0xC0000044) /* a per-process limit was reached */
#define STATUS_INVALID_PAGE_PROTECTION ((NTSTATUS)0xC0000045) /* not a valid PAGE_* value */
#define STATUS_INVALID_IMAGE_FORMAT   ((NTSTATUS)0xC000007B) /* the loader refused the file */
#define STATUS_INSUFFICIENT_RESOURCES ((NTSTATUS)0xC000009A) /* a machine-wide limit was reached */
#define STATUS_FREE_VM_NOT_AT_BASE    ((NTSTATUS)0xC000009F) /* free must start at the region's base */
#define STATUS_MEMORY_NOT_ALLOCATED   ((NTSTATUS)0xC00000A0) /* nothing is allocated there */
#define STATUS_COMMITMENT_LIMIT       ((NTSTATUS)0xC000012D) /* commit beyond RAM + pagefile */
#define STATUS_INVALID_ADDRESS        ((NTSTATUS)0xC0000141) /* an address outside the process's range */

#endif /* EMU_NTSTATUS_H */
