"""x64 unwinding: a PE image's .pdata/.xdata read, and one frame undone (RtlVirtualUnwind).

Microsoft's "x64 exception handling" describes the data. The exception directory
(.pdata) is a sorted array of RUNTIME_FUNCTION, one per non-leaf function:

    +0 BeginAddress  +4 EndAddress  +8 UnwindInfoAddress      (RVAs, 12 bytes)

Each names an UNWIND_INFO (in .xdata, which lld merges into .rdata):

    byte 0   Version (bits 0-2, 1 or 2) | Flags (bits 3-7: UNW_FLAG_EHANDLER 1,
             UNW_FLAG_UHANDLER 2, UNW_FLAG_CHAININFO 4)
    byte 1   SizeOfProlog
    byte 2   CountOfCodes (16-bit slots)
    byte 3   FrameRegister (bits 0-3) | FrameOffset (bits 4-7, x 16)
    +4       UNWIND_CODE[CountOfCodes], padded to an even count; then either
             ExceptionHandler (RVA) + its language-specific data, or a chained
             RUNTIME_FUNCTION

    UNWIND_CODE: byte CodeOffset (end of the prolog instruction), byte UnwindOp (bits
    0-3) | OpInfo (bits 4-7)

The codes are in reverse order of the prolog's instructions, so applying them in order
undoes it. A function with no RUNTIME_FUNCTION is a leaf: RSP points at its return
address. As WinDbg and RtlVirtualUnwind do, a RIP inside an epilog is unwound by
simulating the rest of the epilog (add/lea rsp, pops, ret).
"""

from __future__ import annotations

import bisect
import enum
import struct
from collections.abc import Callable
from dataclasses import dataclass

Reader = Callable[[int, int], bytes]      # (virtual address, size) -> bytes (may raise)

# UNWIND_CODE register numbers (Microsoft's "Operation info" table).
GPR_BY_NUMBER = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
                 "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")


class UnwindOp(enum.IntEnum):
    """UNWIND_CODE.UnwindOp (Microsoft's "x64 exception handling", "Unwind operation code")."""

    PUSH_NONVOL = 0         # push a nonvolatile register
    ALLOC_LARGE = 1         # sub rsp: OpInfo 0 -> next slot x 8, 1 -> next two slots
    ALLOC_SMALL = 2         # sub rsp, OpInfo x 8 + 8
    SET_FPREG = 3           # lea FrameRegister, [rsp + FrameOffset x 16]
    SAVE_NONVOL = 4         # mov [rsp + next slot x 8], reg
    SAVE_NONVOL_FAR = 5     # mov [rsp + next two slots], reg
    EPILOG = 6              # version 2 only: describes an epilog, no effect on unwinding
    SPARE_CODE = 7          # version 2: unused, one slot more
    SAVE_XMM128 = 8         # movaps [rsp + next slot x 16], xmmN
    SAVE_XMM128_FAR = 9     # movaps [rsp + next two slots], xmmN
    PUSH_MACHFRAME = 10     # a hardware interrupt frame (OpInfo 1: with an error code)


UNW_FLAG_EHANDLER, UNW_FLAG_UHANDLER, UNW_FLAG_CHAININFO = 1, 2, 4
_SLOTS = {UnwindOp.ALLOC_LARGE: None, UnwindOp.SAVE_NONVOL: 2, UnwindOp.SAVE_NONVOL_FAR: 3,
          UnwindOp.SAVE_XMM128: 2, UnwindOp.SAVE_XMM128_FAR: 3, UnwindOp.EPILOG: 2,
          UnwindOp.SPARE_CODE: 2}
MACHINE_FRAME = "machine_frame"    # set in a context while PUSH_MACHFRAME has given RIP
MAX_CHAIN = 32                     # chained UNWIND_INFOs followed at most (a loop guard)


class UnwindError(Exception):
    """The unwind data cannot be followed (malformed, or memory it needs is unreadable)."""


@dataclass(frozen=True)
class RuntimeFunction:
    """One .pdata entry, as virtual addresses: [begin, end) and its UNWIND_INFO."""

    begin: int
    end: int
    unwind_info: int


@dataclass(frozen=True)
class FrameHandler:
    """What a frame's UNWIND_INFO names for exception handling: the language-specific
    handler's address and its data (for __C_specific_handler, the SCOPE_TABLE)."""

    handler: int
    data: int


def read_function_table(data: bytes, base: int) -> list[RuntimeFunction]:
    """The RUNTIME_FUNCTIONs of an exception directory's bytes ``data`` (RVAs made
    absolute with ``base``), sorted by address; entries with end <= begin are dropped."""
    table = []
    for off in range(0, len(data) - 11, 12):
        begin, end, info = struct.unpack_from("<III", data, off)
        if end > begin:
            table.append(RuntimeFunction(base + begin, base + end, base + (info & ~1)))
    table.sort(key=lambda f: f.begin)
    return table


def lookup(table: list[RuntimeFunction], rip: int) -> RuntimeFunction | None:
    """The RUNTIME_FUNCTION whose [begin, end) holds ``rip`` (RtlLookupFunctionEntry)."""
    i = bisect.bisect_right([f.begin for f in table], rip) - 1
    if i >= 0 and table[i].begin <= rip < table[i].end:
        return table[i]
    return None


def _u64(read: Reader, va: int) -> int:
    return int.from_bytes(read(va, 8), "little")


def _in_epilog(read: Reader, rip: int, function: RuntimeFunction) -> list[tuple[str, int]] | None:
    """The epilog steps left at ``rip`` if it is in one, else None. An epilog is (Microsoft's
    "Epilog code"): at most one `add rsp, imm` or `lea rsp, [fp + disp]`, then pops of
    nonvolatile registers, then `ret` (or a `jmp` out of the function, a tail call)."""
    try:
        code = read(rip, 64)
    except Exception:  # noqa: BLE001 - unreadable code: not an epilog we can prove
        return None
    steps: list[tuple[str, int]] = []
    i = 0
    rex = code[0] if code[0] & 0xF0 == 0x40 else 0
    body = code[1:] if rex else code
    if rex & 8 and body[:2] == b"\x83\xc4":                       # add rsp, imm8
        steps.append(("add", struct.unpack_from("<b", body, 2)[0]))
        i = 4
    elif rex & 8 and body[:2] == b"\x81\xc4":                     # add rsp, imm32
        steps.append(("add", struct.unpack_from("<i", body, 2)[0]))
        i = 7
    elif rex & 8 and body[:1] == b"\x8d" and (body[1] >> 3) & 7 == 4 and body[1] >> 6 in (1, 2) \
            and body[1] & 7 != 4:                                  # lea rsp, [reg + disp]
        reg = GPR_BY_NUMBER[(body[1] & 7) | (8 if rex & 1 else 0)]
        disp = struct.unpack_from("<b" if body[1] >> 6 == 1 else "<i", body, 2)[0]
        steps.append(("lea", GPR_BY_NUMBER.index(reg) << 32 | (disp & 0xFFFF_FFFF)))
        i = 4 if body[1] >> 6 == 1 else 7
    while i < len(code) - 1:
        if 0x58 <= code[i] <= 0x5F:                                # pop r64
            steps.append(("pop", code[i] - 0x58))
            i += 1
        elif code[i] == 0x41 and 0x58 <= code[i + 1] <= 0x5F:      # pop r8-r15
            steps.append(("pop", code[i + 1] - 0x58 + 8))
            i += 2
        else:
            break
    if code[i] in (0xC3, 0xC2) or code[i:i + 2] == b"\xf3\xc3":    # ret (rep ret)
        return steps
    if code[i] == 0xE9 and i + 5 <= len(code):                     # jmp rel32 out of it
        target = rip + i + 5 + struct.unpack_from("<i", code, i + 1)[0]
        return steps if not function.begin <= target < function.end else None
    if code[i:i + 2] == b"\x48\xff" or code[i:i + 2] == b"\xff\x25":   # jmp [..]: tail call
        return steps if steps else None
    return None


def _finish_epilog(read: Reader, context: dict[str, int], steps: list[tuple[str, int]]) -> None:
    for op, value in steps:
        if op == "add":
            context["rsp"] = (context["rsp"] + value) & 0xFFFF_FFFF_FFFF_FFFF
        elif op == "lea":
            reg, disp = GPR_BY_NUMBER[value >> 32], value & 0xFFFF_FFFF
            disp -= (disp & 0x8000_0000) << 1
            context["rsp"] = (context[reg] + disp) & 0xFFFF_FFFF_FFFF_FFFF
        else:
            context[GPR_BY_NUMBER[value]] = _u64(read, context["rsp"])
            context["rsp"] += 8
    context["rip"] = _u64(read, context["rsp"])
    context["rsp"] += 8


def virtual_unwind(read: Reader, image_base: int, function: RuntimeFunction | None,
                   context: dict[str, int], handler_flag: int = 0
                   ) -> tuple[int, FrameHandler | None]:
    """Undo the frame of the function at ``context["rip"]`` (RtlVirtualUnwind): ``context``
    becomes its caller's (RIP, RSP and the nonvolatile registers the prolog saved).
    Returns (EstablisherFrame, the handler named by ``handler_flag`` (UNW_FLAG_EHANDLER or
    UNW_FLAG_UHANDLER) or None: none asked for, none there, or RIP in a prolog or an
    epilog, where handlers are not called). ``function`` None is a leaf."""
    rip = context["rip"]
    frame = context["rsp"]
    if function is None:                                  # a leaf: [rsp] is the return
        context["rip"] = _u64(read, context["rsp"])
        context["rsp"] += 8
        return frame, None
    try:
        header = read(function.unwind_info, 4)
    except Exception:  # noqa: BLE001 - the reader's own fault type
        raise UnwindError(f"UNWIND_INFO at 0x{function.unwind_info:x} unreadable") from None
    if header[1] and header[2] and function.begin + header[1] <= rip:
        steps = _in_epilog(read, rip, function)
        if steps is not None:
            _finish_epilog(read, context, steps)
            return frame, None
    entry, in_prolog, handler = function, False, None
    for _ in range(MAX_CHAIN):
        version_flags, prolog, count, frame_byte = read(entry.unwind_info, 4)
        if version_flags & 7 not in (1, 2):
            raise UnwindError(f"UNWIND_INFO version {version_flags & 7} at "
                              f"0x{entry.unwind_info:x}")
        codes = read(entry.unwind_info + 4, 2 * count) if count else b""
        offset = rip - entry.begin
        in_prolog_here = entry is function and 0 <= offset < prolog
        in_prolog |= in_prolog_here
        frame = _apply_codes(read, context, codes, frame_byte, offset if in_prolog_here
                             else None, frame)
        tail = entry.unwind_info + 4 + 2 * (count + (count & 1))
        flags = version_flags >> 3
        if not flags & UNW_FLAG_CHAININFO:
            if flags & handler_flag:
                handler = FrameHandler(image_base + struct.unpack("<I", read(tail, 4))[0],
                                       tail + 4)
            break
        begin, end, info = struct.unpack("<III", read(tail, 12))
        entry = RuntimeFunction(image_base + begin, image_base + end, image_base + info)
    else:
        raise UnwindError(f"more than {MAX_CHAIN} chained UNWIND_INFOs")
    if not context.pop(MACHINE_FRAME, 0):
        context["rip"] = _u64(read, context["rsp"])
        context["rsp"] += 8
    return frame, None if in_prolog else handler


def _parse_codes(codes: bytes) -> list[tuple[int, int, int, bytes]]:
    """(CodeOffset, UnwindOp, OpInfo, operand slots) of each UNWIND_CODE in ``codes``."""
    out, i = [], 0
    while i < len(codes) // 2:
        code_offset, op_byte = codes[2 * i], codes[2 * i + 1]
        op, info = op_byte & 0xF, op_byte >> 4
        slots = _SLOTS.get(op, 1) if op != UnwindOp.ALLOC_LARGE else 2 + (info != 0)
        out.append((code_offset, op, info, codes[2 * i + 2:2 * i + 2 * slots]))
        i += slots
    return out


def _apply_codes(read: Reader, context: dict[str, int], codes: bytes, frame_byte: int,
                 prolog_offset: int | None, frame: int) -> int:
    """Undo one UNWIND_INFO's codes on ``context`` (those whose prolog instruction has run,
    when RIP is in the prolog: ``prolog_offset``); returns the EstablisherFrame."""
    frame_reg, frame_offset = frame_byte & 0xF, (frame_byte >> 4) * 16
    ops = [c for c in _parse_codes(codes) if prolog_offset is None or c[0] <= prolog_offset]
    if frame_reg and any(op == UnwindOp.SET_FPREG for _, op, _, _ in ops):
        # Once the prolog has set the frame register, the fixed part of the frame (where
        # SAVE_NONVOL offsets count from) is at FrameRegister - FrameOffset, whatever RSP
        # has become since (alloca).
        frame = context[GPR_BY_NUMBER[frame_reg]] - frame_offset
    for _, op, info, slot in ops:
        if op == UnwindOp.PUSH_NONVOL:
            context[GPR_BY_NUMBER[info]] = _u64(read, context["rsp"])
            context["rsp"] += 8
        elif op == UnwindOp.ALLOC_LARGE:
            context["rsp"] += struct.unpack("<I", slot)[0] if info else \
                struct.unpack("<H", slot)[0] * 8
        elif op == UnwindOp.ALLOC_SMALL:
            context["rsp"] += info * 8 + 8
        elif op == UnwindOp.SET_FPREG:
            # The frame register holds RSP + FrameOffset: RSP at this point of the prolog.
            context["rsp"] = frame = context[GPR_BY_NUMBER[frame_reg]] - frame_offset
        elif op in (UnwindOp.SAVE_NONVOL, UnwindOp.SAVE_NONVOL_FAR):
            off = struct.unpack("<H", slot)[0] * 8 if op == UnwindOp.SAVE_NONVOL else \
                struct.unpack("<I", slot)[0]
            context[GPR_BY_NUMBER[info]] = _u64(read, frame + off)
        elif op in (UnwindOp.SAVE_XMM128, UnwindOp.SAVE_XMM128_FAR):
            off = struct.unpack("<H", slot)[0] * 16 if op == UnwindOp.SAVE_XMM128 else \
                struct.unpack("<I", slot)[0]
            context[f"xmm{info}"] = int.from_bytes(read(frame + off, 16), "little")
        elif op == UnwindOp.PUSH_MACHFRAME:
            # RIP, CS, RFLAGS, RSP, SS as the CPU pushed them (an error code first if 1):
            # the caller's RIP and RSP are those, not a return address.
            at = context["rsp"] + (8 if info else 0)
            context["rip"] = _u64(read, at)
            context["rsp"] = _u64(read, at + 24)
            context[MACHINE_FRAME] = 1
        elif op not in (UnwindOp.EPILOG, UnwindOp.SPARE_CODE):
            raise UnwindError(f"unknown unwind operation {op}")
    return frame


def walk(read: Reader, context: dict[str, int],
         table_of: Callable[[int], tuple[int, list[RuntimeFunction]] | None],
         is_export: Callable[[int], bool], limit: int) -> list[int]:
    """The callers of the frame in ``context`` (a copy is unwound), as WinDbg's ``k``
    finds them: while RIP is in a PE image (``table_of(rip)``: its base and .pdata) each
    frame is undone with its unwind data; a kernel export's trap address (``is_export``) is
    a frame of its own with its return address at [rsp]. Stops after the first return
    address outside both (included), at ``limit`` addresses, or where the data or the
    stack cannot be read (UnwindError and the reader's errors end it quietly)."""
    context = dict(context)
    callers: list[int] = []
    while len(callers) < limit:
        rip = context["rip"]
        try:
            if is_export(rip):
                virtual_unwind(read, 0, None, context)
            else:
                found = table_of(rip)
                if found is None:
                    break
                base, table = found
                virtual_unwind(read, base, lookup(table, rip), context)
        except Exception:  # noqa: BLE001 - unreadable stack or unwind data: the walk ends
            break
        if not context["rip"]:
            break
        callers.append(context["rip"])
    return callers
