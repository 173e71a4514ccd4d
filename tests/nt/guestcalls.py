"""Raw system calls from ring 3, for the service tests: a code page of ``movabs`` + ``syscall``
with each result stored in a data page, and a picture of everything a call could change."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from emu.nt.loader import Image, Segment
from emu.nt.mm import virtual
from emu.nt.syscalls import Service

DRIVERS = Path(__file__).resolve().parents[2] / "guest" / "build" / "drivers"
CODE, DATA, RDONLY = 0x40_0000, 0x40_1000, 0x40_2000
RESULTS = DATA                          # 64 result slots
OUTS = DATA + 0x200                     # where the setup calls store their handles
CONSOLE_STR, HELLO_STR = DATA + 0x280, DATA + 0x2A0
TICKET_STR, IOCTL_STR, ARGS_STR = DATA + 0x2B0, DATA + 0x2D0, DATA + 0x2F0
OUTV, COUNT = DATA + 0x300, DATA + 0x308          # out variables of the call under test
BASEV, SIZEV = DATA + 0x320, DATA + 0x328         # *BaseAddress = 0, *RegionSize = 0x1000
BASEV2, SIZEV2, OLDV = DATA + 0x330, DATA + 0x338, DATA + 0x340   # 0x500000, 0, -
SIZEV3 = DATA + 0x348                             # 0x1000
SETUP_BASE, SETUP_SIZE = DATA + 0x350, DATA + 0x358
IOSB = DATA + 0x360
BUF, BUF2 = DATA + 0x400, DATA + 0x480            # "hello" and an output buffer
MBI = DATA + 0x500
CMD = DATA + 0x540                                # SYSTEM_MEMORY_LIST_COMMAND 2
CTX = DATA + 0x600                                # a CONTEXT (408 bytes)
THREAD_FN = CODE + 0xC00                          # writes "T" to the console and returns
REGION = 0x50_0000                                # reserved and committed by the setup
CONSOLE, FILE, EVENT, TICKET, IOCTL, LAST = 4, 8, 12, 16, 20, 24   # the setup's handles
NT_CURRENT_PROCESS = (1 << 64) - 1
IOCTL_REVERSE_BUFFERED = 0x22_2000        # CTL_CODE(FILE_DEVICE_UNKNOWN, 0x800, BUFFERED, 0)

# mov r64, imm64 in the ABI's argument order: rdi, rsi, rdx, r10, r8, r9
MOVABS = [b"\x48\xbf", b"\x48\xbe", b"\x48\xba", b"\x49\xba", b"\x49\xb8", b"\x49\xb9"]


@dataclass(frozen=True)
class Call:
    number: int
    args: tuple[int, ...] = ()
    stack7: int | None = None           # argument 7, at [rsp + 8] at the syscall


def assemble(calls: list[Call]) -> bytes:
    """Each call, its result stored at RESULTS + 8 * i."""
    code = b""
    for i, call in enumerate(calls):
        if call.stack7 is not None:     # movabs rax, v; mov [rsp + 8], rax
            code += b"\x48\xb8" + struct.pack("<Q", call.stack7) + b"\x48\x89\x44\x24\x08"
        args = list(call.args) + [0] * (6 - len(call.args))
        for op, value in zip(MOVABS, args, strict=True):
            code += op + struct.pack("<Q", value & ((1 << 64) - 1))
        code += b"\x48\xb8" + struct.pack("<Q", call.number) + b"\x0f\x05"
        code += b"\x48\xa3" + struct.pack("<Q", RESULTS + 8 * i)      # movabs [slot], rax
    return code + b"\xeb\xfe"


SETUP = [Call(Service.NtOpenFile, (CONSOLE_STR, OUTS)),
         Call(Service.NtOpenFile, (HELLO_STR, OUTS + 8)),
         Call(Service.NtCreateEvent, (OUTS + 16, 1, 0)),
         Call(Service.NtOpenFile, (TICKET_STR, OUTS + 24)),
         Call(Service.NtOpenFile, (IOCTL_STR, OUTS + 32)),
         Call(Service.NtCreateEvent, (OUTS + 40, 0, 0)),
         Call(Service.NtAllocateVirtualMemory, (SETUP_BASE, SETUP_SIZE, 0x3000, 4))]
FINAL = [Call(Service.NtWaitForSingleObject, (LAST, NT_CURRENT_PROCESS))]   # wait forever


def thread_routine() -> bytes:
    """NtWriteConsole("T", 1); ret (into RtlUserThreadExit)."""
    return (MOVABS[0] + struct.pack("<Q", BUF + 0x100) + MOVABS[1] + struct.pack("<Q", 1)
            + b"\x48\xb8" + struct.pack("<Q", Service.NtWriteConsole) + b"\x0f\x05\xc3")


def data_page() -> bytearray:
    page = bytearray(4096)

    def put(va: int, data: bytes) -> None:
        page[va - DATA:va - DATA + len(data)] = data
    put(CONSOLE_STR, b"\\Device\\Console\0")
    put(HELLO_STR, b"hello\0")
    put(TICKET_STR, b"\\Device\\Ticket\0")
    put(IOCTL_STR, b"\\Device\\Ioctl\0")
    put(ARGS_STR, b"x y\0")
    put(SIZEV, struct.pack("<Q", 0x1000))
    put(BASEV2, struct.pack("<Q", REGION))
    put(SIZEV3, struct.pack("<Q", 0x1000))
    put(SETUP_BASE, struct.pack("<QQ", REGION, 0x10000))
    put(BUF, b"hello")
    put(BUF + 0x100, b"T")
    put(CMD, struct.pack("<I", 2))
    return page


def run(machine_factory, calls: list[Call], *, setup: bool = True,
        plant: dict[int, bytes] | None = None,
        drivers: tuple[str, ...] = ("ticket.sys", "ioctl.sys"), prepare=None):
    """Run SETUP + ``calls`` + FINAL in a fresh machine with ``drivers``, with ``plant``'s
    bytes in the data page (and ``prepare(executive, process)`` called before it runs);
    returns (machine, process, results, driver dispatches)."""
    m = machine_factory(mem="16M", max_insns=2_000_000)
    for driver in drivers:
        m.add_driver(DRIVERS / driver)
    ex = m.executive
    dispatches = [0]
    real_call = ex.io._call

    def counted(*a):
        dispatches[0] += 1
        return real_call(*a)
    ex.io._call = counted
    program = (SETUP if setup else []) + calls + FINAL
    code = bytearray(assemble(program).ljust(0xC00, b"\xcc"))
    code += thread_routine()
    data = data_page()
    for va, value in (plant or {}).items():
        data[va - DATA:va - DATA + len(value)] = value
    image = Image("svc", "svc", 0, CODE,
                  [Segment(CODE, 4096, 7), Segment(DATA, 4096, 6), Segment(RDONLY, 4096, 4)],
                  {CODE: bytes(code.ljust(4096, b"\xcc")), DATA: bytes(data),
                   RDONLY: bytes(4096)},
                  {CODE: 7, DATA: 6, RDONLY: 4})
    proc = ex.create_process(image, [])
    if prepare is not None:
        prepare(ex, proc)
    m.run()
    if m.result.bugcheck is not None:
        return m, proc, (), dispatches[0]
    results = struct.unpack("<64Q", read_user(ex, proc, RESULTS, 512))
    return m, proc, results[:len(program)], dispatches[0]


def read_user(ex, proc, va: int, n: int) -> bytes:
    """Bytes of a live process's present pages."""
    out = b""
    while n:
        take = min(n, 4096 - va % 4096)
        mapping = proc.space.lookup(va)
        out += ex.mem.read(mapping.pfn * 4096 + va % 4096, take)
        va, n = va + take, n - take
    return out


def regions(ex, proc) -> list[tuple]:
    """The process's address space as NtQueryVirtualMemory describes it, region by region."""
    out, va = [], 0x10000
    while va <= proc.highest_address:
        _, info = virtual.query(ex, proc, va)
        out.append((info.base, info.allocation_base, info.size, info.state, info.protect,
                    info.type))
        va = info.base + info.size
    return out


def snapshot(m, proc, dispatches: int) -> dict:
    """Everything a system call could have changed, as the user would see it."""
    ex = m.executive
    return {
        "console": bytes(proc.output),
        "process": (proc.state, proc.exit_status),
        "threads": [(t.state, t.exit_status) for t in proc.threads],
        "other processes": [(p.name, p.state, bytes(p.output)) for p in ex.processes
                            if p is not proc],
        "handles": [(h, o.object_type) for h, o in proc.handles.items()],
        "objects": sorted(str(o.object_type) for o in ex.objects.live()),
        "file position": proc.handles.lookup(FILE).position,
        "event": proc.handles.lookup(EVENT).state,
        "driver dispatches": dispatches,
        "data page": read_user(ex, proc, DATA + 0x200, 4096 - 0x200),
        "regions": regions(ex, proc),
        "commit": virtual.commit_state(ex).charged,
        "dispatcher": proc.exception_dispatcher,
    }
