"""Processes: a private address space, an image, and what became of it."""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

from emu.nt.loader import Image
from emu.nt.mm.address_space import AddressSpace


class ProcessState(enum.Enum):
    READY = "ready"
    RUNNING = "running"
    TERMINATED = "terminated"


@dataclass(frozen=True)
class ExceptionInfo:
    """The EXCEPTION_RECORD of the exception that killed a process (winnt.h)."""

    code: int                    # NTSTATUS, e.g. 0xC0000005
    rip: int                     # ExceptionAddress: the faulting instruction
    instruction: str             # its disassembly
    access: str | None = None    # "read", "write" or "execute" for access violations
    address: int | None = None   # the inaccessible address, for access violations
    params: tuple[int, ...] = ()  # ExceptionInformation[]
    detail: str = ""             # what the hardware found (the page walk's reason)

    @property
    def name(self) -> str:
        from emu.nt.status import status_name
        return status_name(self.code)


@dataclass
class Process:
    """An executive process object (EPROCESS), reduced to what this machine uses."""

    pid: int
    name: str
    image: Image
    args: list[str]
    space: AddressSpace
    parent_pid: int | None = None
    state: ProcessState = ProcessState.READY
    exit_status: int | None = None
    exception: ExceptionInfo | None = None
    output: bytearray = field(default_factory=bytearray)
    stack_low: int = 0           # lowest committed stack address; the guard page is below it
    stack_high: int = 0
    entry_rsp: int = 0
    instructions: int = 0        # instructions run by this process (when counting)
    highest_address: int = 0x0000_7FFF_FFFE_FFFF   # MmHighestUserAddress (0x7FFFFFFF: 32-bit)
    vads: object = None          # the process's VAD tree (emu.nt.mm.vad)


AT_NULL, AT_PAGESZ, AT_ENTRY = 0, 6, 9       # auxiliary vector types (System V ABI)


def initial_stack(top: int, argv: list[bytes], entry: int) -> tuple[int, bytes]:
    """The System V initial process stack (x86-64 psABI §3.4.1) ending at ``top``:
    returns (rsp, the bytes from rsp up to top). At rsp: argc, argv[], NULL, an empty
    envp (NULL), the auxiliary vector; the argument strings above it; rsp 16-byte aligned."""
    strings = b"".join(s + b"\0" for s in argv)
    str_base = (top - len(strings)) & ~0xF
    pointers, at = [], str_base
    for s in argv:
        pointers.append(at)
        at += len(s) + 1
    vector = [len(argv), *pointers, 0, 0,
              AT_PAGESZ, 4096, AT_ENTRY, entry, AT_NULL, 0]
    block = struct.pack(f"<{len(vector)}Q", *vector)
    rsp = (str_base - len(block)) & ~0xF
    image = bytearray(top - rsp)
    image[0:len(block)] = block
    image[str_base - rsp:str_base - rsp + len(strings)] = strings
    return rsp, bytes(image)
