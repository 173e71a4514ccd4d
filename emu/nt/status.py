"""NTSTATUS values (ntstatus.h; [MS-ERREF] §2.3.1) that the executive returns or raises."""

from __future__ import annotations

import enum


class NTSTATUS(enum.IntEnum):
    """Status codes, named as in ntstatus.h."""

    STATUS_SUCCESS = 0x0000_0000
    STATUS_GUARD_PAGE_VIOLATION = 0x8000_0001
    STATUS_BREAKPOINT = 0x8000_0003
    STATUS_SINGLE_STEP = 0x8000_0004
    STATUS_ACCESS_VIOLATION = 0xC000_0005
    STATUS_INVALID_HANDLE = 0xC000_0008
    STATUS_INVALID_PARAMETER = 0xC000_000D
    STATUS_INVALID_SYSTEM_SERVICE = 0xC000_001C
    STATUS_ILLEGAL_INSTRUCTION = 0xC000_001D
    STATUS_INTEGER_DIVIDE_BY_ZERO = 0xC000_0094
    STATUS_INTEGER_OVERFLOW = 0xC000_0095
    STATUS_PRIVILEGED_INSTRUCTION = 0xC000_0096
    STATUS_STACK_OVERFLOW = 0xC000_00FD
    STATUS_FLOAT_MULTIPLE_TRAPS = 0xC000_02B5
    STATUS_DATATYPE_MISALIGNMENT = 0x8000_0002
    STATUS_IN_PAGE_ERROR = 0xC000_0006
    STATUS_NO_MEMORY = 0xC000_0017
    STATUS_COMMITMENT_LIMIT = 0xC000_012D
    STATUS_TIMEOUT = 0x0000_0102


def status_name(code: int) -> str:
    """The ntstatus.h name of ``code``, or its hex value if it is not one we know."""
    try:
        return NTSTATUS(code).name
    except ValueError:
        return f"0x{code & 0xFFFF_FFFF:08X}"


def nt_success(code: int) -> bool:
    """NT_SUCCESS(): severity success or informational (the top bit clear)."""
    return not code & 0x8000_0000
