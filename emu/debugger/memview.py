"""Memory as gdb shows it (``x/FMT``, ``xp/FMT``), disassembly with symbols, and a
backtrace: by frame pointers (the ELF guests keep them: -fno-omit-frame-pointer), and
through PE drivers by their .pdata/.xdata unwind data, as WinDbg does."""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass

from emu.debugger.mapview import kernel_area
from emu.debugger.records import TargetError
from emu.debugger.symbols import nearest
from emu.debugger.targetbase import Target, decoder
from emu.nt import exports, kernel, layout, unwind

FORMATS = "xduotacsi"
SIZES = {"b": 1, "h": 2, "w": 4, "g": 8}
_PER_LINE = {1: 8, 2: 8, 4: 4, 8: 2}
_SPEC = re.compile(r"^(\d*)([a-z]*)$")
MAX_COUNT = 4096
MAX_FRAMES = 32
CALLED_BY_EXECUTIVE = ("called by the executive: a driver routine (DriverEntry, dispatch, "
                       "ISR, DPC) starts the kernel stack")
_SCAN_LIMIT = 256                  # instructions read from a function's start to find its frame
_RET = 0xC3


@dataclass(frozen=True)
class Format:
    """A gdb ``x`` format: how many units, shown how, of what size."""

    count: int = 1
    letter: str = "x"
    size: int = 4


def parse_format(spec: str, last: Format = Format()) -> Format:
    """``4gx`` -> Format(4, "x", 8); letters left out come from ``last`` (as gdb's x)."""
    match = _SPEC.match(spec)
    if not match:
        raise TargetError(f"bad format '/{spec}': expected /[COUNT][FORMAT][SIZE], e.g. /4gx")
    count = int(match.group(1)) if match.group(1) else 1
    letter, size = last.letter, last.size
    for ch in match.group(2):
        if ch in SIZES:
            size = SIZES[ch]
        elif ch in FORMATS:
            letter = ch
        else:
            raise TargetError(f"bad format letter '{ch}' in '/{spec}' (formats "
                              f"{' '.join(FORMATS)}; sizes {' '.join(SIZES)})")
    if letter == "a" and "g" not in match.group(2):
        size = 8
    if letter == "c" and not set(match.group(2)) & set(SIZES):
        size = 1
    if not 0 < count <= MAX_COUNT:
        raise TargetError(f"bad count {count}: between 1 and {MAX_COUNT}")
    return Format(count, letter, size)


def _value(raw: bytes, letter: str, size: int, name: Callable[[int], str]) -> str:
    u = int.from_bytes(raw, "little")
    if letter == "x":
        return f"0x{u:0{size * 2}x}"
    if letter == "d":
        return str(u - (1 << (8 * size)) if u >> (8 * size - 1) else u)
    if letter == "u":
        return str(u)
    if letter == "o":
        return f"0{u:o}" if u else "0"
    if letter == "t":
        return f"{u:0{size * 8}b}"
    if letter == "c":
        return f"{u} {chr(u)!r}" if 32 <= u < 127 else f"{u} '\\x{u:02x}'"
    label = name(u)
    return f"{u:#018x}" + (f" <{label}>" if label else "")


def format_value(value: int, letter: str, name: Callable[[int], str]) -> str:
    """A 64-bit value in one gdb format letter (``print/x``): no padding, as gdb prints."""
    if letter == "x":
        return f"{value:#x}"
    if letter == "d":
        return str(value - (1 << 64) if value >> 63 else value)
    if letter == "o":
        return f"0{value:o}" if value else "0"
    if letter == "t":
        return f"{value:b}"
    if letter == "c":
        return _value(bytes([value & 0xFF]), "c", 1, name)
    if letter == "a":
        label = name(value)
        return f"{value:#x}" + (f" <{label}>" if not label.startswith("0x") else "")
    return str(value)


@dataclass
class Reader:
    """Where ``x`` reads: virtual memory of a process, or physical memory (``xp``)."""

    target: Target
    pid: int | None
    physical: bool = False

    def prefix(self, address: int, n: int) -> bytes:
        if self.physical:
            end = min(address + n, self.target.ram_size)
            return self.target.read_physical(address, end - address) if end > address else b""
        return self.target.read_prefix(address, n, self.pid)

    def why(self, address: int) -> str:
        """The error for the first byte that could not be read."""
        try:
            if self.physical:
                self.target.read_physical(address, 1)
            else:
                self.target.translate(address, self.pid)
        except TargetError as err:
            return f"cannot access {err}"          # the reason starts with the address
        return f"cannot access memory at {address:#x}"

    def label(self, address: int) -> str:
        """``hello!main+0x4`` for an address in an image (virtual memory only)."""
        if self.physical or self.target.image_at(address, self.pid) is None:
            return ""
        return self.target.symbolize(address, self.pid)


def examine(reader: Reader, address: int, fmt: Format,
            rip: int | None = None) -> tuple[list[str], str | None, int]:
    """gdb's ``x``: (lines, error or None, the address after the last unit shown)."""
    if fmt.letter == "i":
        return _examine_code(reader, address, fmt.count, rip)
    if fmt.letter == "s":
        return _examine_strings(reader, address, fmt.count)
    want = fmt.count * fmt.size
    data = reader.prefix(address, want)
    units = len(data) // fmt.size
    per_line = 2 if fmt.letter == "a" else _PER_LINE[fmt.size]
    lines = []
    for first in range(0, units, per_line):
        at = address + first * fmt.size
        label = reader.label(at)
        values = [_value(data[(first + i) * fmt.size:(first + i + 1) * fmt.size], fmt.letter,
                         fmt.size, reader.label)
                  for i in range(min(per_line, units - first))]
        lines.append(f"{at:#x}{f' <{label}>' if label else ''}:\t" + "\t".join(values))
    end = address + units * fmt.size
    return lines, (reader.why(address + len(data)) if units < fmt.count else None), end


def _examine_strings(reader: Reader, address: int, count: int):
    lines, at = [], address
    for _ in range(count):
        data = reader.prefix(at, 256)
        nul = data.find(b"\0")
        text = data if nul < 0 else data[:nul]
        if nul < 0 and len(data) < 256:
            return lines, reader.why(at + len(data)), at
        lines.append(f"{at:#x}:\t\"{_escape(text)}\"" + ("..." if nul < 0 else ""))
        at += len(text) + (1 if nul >= 0 else 0)
    return lines, None, at


def _escape(data: bytes) -> str:
    out = []
    for b in data:
        ch = chr(b)
        out.append({"\n": "\\n", "\t": "\\t", "\r": "\\r", '"': '\\"', "\\": "\\\\"}.get(
            ch, ch if 32 <= b < 127 else f"\\x{b:02x}"))
    return "".join(out)


def _examine_code(reader: Reader, address: int, count: int, rip: int | None):
    if reader.physical:
        code = reader.prefix(address, count * 15)
        insns = [(i.address, bytes(i.bytes), f"{i.mnemonic} {i.op_str}".strip())
                 for i in decoder(64).disasm(code, address, count)]
        if not insns:
            return [], reader.why(address), address
    else:
        try:
            insns = reader.target.disassemble(address, count, reader.pid)
        except TargetError as err:
            return [], f"cannot access {err}", address
    lines = code_lines(reader, insns, rip, with_bytes=False)
    end = insns[-1][0] + len(insns[-1][1]) if insns else address
    return lines, (reader.why(end) if len(insns) < count else None), end


def code_lines(reader: Reader, insns: list[tuple[int, bytes, str]], rip: int | None,
               with_bytes: bool = True) -> list[str]:
    """``=> 0x401022 <badread!main+0x22>:  48 8b 03   mov rax, qword ptr [rbx]``."""
    lines = []
    for at, raw, text in insns:
        mark = "=> " if at == rip else "   "
        label = reader.label(at)
        where = f"{at:#x}" + (f" <{label}>" if label else "")
        code = f"{raw.hex(' '):<24} " if with_bytes else ""
        lines.append(f"{mark}{where}:\t{code}{text}{_branch_label(reader, text)}")
    return lines


_BRANCH = re.compile(r"^(call|jmp|j[a-z]+|loop[a-z]*)\s+(0x[0-9a-f]+)$")


def _branch_label(reader: Reader, text: str) -> str:
    """`` <hello!printf>`` after a call or jump to an immediate target that has a name."""
    match = _BRANCH.match(text)
    if match is None or reader.physical:
        return ""
    address = int(match.group(2), 16)
    label = reader.target.symbolize(address, reader.pid)
    return "" if label.startswith("0x") else f" <{label}>"


def disassembly(target: Target, address: int, count: int, pid: int | None,
                rip: int | None) -> list[str]:
    """``disas``: ``count`` instructions from ``address``, the current one marked ``=>``."""
    insns = target.disassemble(address, count, pid)
    return code_lines(Reader(target, pid), insns, rip)


def backtrace(target: Target, pid: int | None = None) -> tuple[list[int], str | None]:
    """Return addresses up the stack by frame pointers: ([rip, caller, ...], a note on where
    it ends, or None). Frame 0's return address comes from [rsp] while its function has not
    set up a frame yet (or has no frame: the system-call stubs)."""
    regs = target.registers(pid)
    rip, rsp, rbp = regs["rip"], regs["rsp"], regs["rbp"]
    if _pe_code(target, rip, pid) is not None or exports.name_at(rip):
        return _unwound(target, regs, pid)
    bits = target.code_bits(rip, pid)
    word = 8 if bits == 64 else 4
    frames = [rip]
    try:
        first = _frame0_return(target, rip, rsp, bits, pid)
        if first is not None and not _in_code(target, first, pid):
            return frames, (f"the word on the stack, {first:#x}, is no return address (it "
                            "points into no image): nothing called this function, it is "
                            "where the thread started")
        if first is not None:
            frames.append(first)
        while len(frames) < MAX_FRAMES and rbp and not rbp % word:
            saved, ret = struct.unpack("<QQ" if word == 8 else "<II",
                                       target.read_virtual(rbp, 2 * word, pid))
            if ret == kernel.KERNEL_RETURN:
                return frames, CALLED_BY_EXECUTIVE
            if ret == 0:
                break
            if not _in_code(target, ret, pid):
                return frames, (f"the frame at {rbp:#x} holds {ret:#x}, which points into "
                                "no image: not a return address, the walk stops")
            frames.append(ret)
            if saved <= rbp:
                break
            rbp = saved
    except TargetError as err:
        return frames, f"the stack is unreadable: {err}"
    return frames, None


def _pe_code(target: Target, address: int, pid: int | None) -> tuple[int, list] | None:
    """(base, .pdata) of the PE driver image holding ``address``, or None."""
    image = target.image_at(address, pid) if address >= layout.KERNEL_SPACE_START else None
    return (image.base, list(image.functions)) if image and image.functions else None


def _unwound(target: Target, regs: dict[str, int], pid: int | None
             ) -> tuple[list[int], str | None]:
    """The frames of a PE driver (or a kernel export it called) by virtual unwind through
    the image's .pdata/.xdata, as WinDbg's ``k`` finds them (emu.nt.unwind)."""
    context = {name: regs.get(name, 0) for name in unwind.GPR_BY_NUMBER}
    context["rip"] = regs["rip"]
    callers = unwind.walk(lambda va, n: target.read_virtual(va, n, pid), context,
                          lambda a: _pe_code(target, a, pid),
                          lambda a: exports.name_at(a) is not None, MAX_FRAMES - 1)
    frames = [regs["rip"]]
    for address in callers:
        if address == kernel.KERNEL_RETURN:
            return frames, CALLED_BY_EXECUTIVE
        frames.append(address)
    if len(callers) < MAX_FRAMES - 1 and frames[-1] != regs["rip"] and \
            not _in_code(target, frames[-1], pid):
        return frames[:-1], (f"{frames[-1]:#x} points into no image: not a return "
                             "address, the walk stops")
    return frames, None


def _frame0_return(target: Target, rip: int, rsp: int, bits: int, pid: int | None) -> int | None:
    """The return address of the innermost function while rbp is not yet (or no longer,
    or never) its own frame pointer; None when the rbp chain already starts there.

    The function's code from its symbol to RIP is read in a line: `push rbp; mov rbp, rsp`
    makes a frame (gcc may schedule other instructions in between); without one, the
    return address sits above what the function pushed (the system-call stubs push
    registers and set up no frame). At a `ret` it is at [rsp]; outside every image too."""
    word = 8 if bits == 64 else 4
    image = target.image_at(rip, pid)
    found = nearest(image, rip) if image is not None else None
    if found is None or target.read_prefix(rip, 1, pid) == bytes([_RET]):
        return _nonzero(_word(target, rsp, word, pid))
    depth = _stack_depth(target.disassemble(found[1], _SCAN_LIMIT, pid), rip, word)
    return None if depth is None else _nonzero(_word(target, rsp + depth, word, pid))


def _stack_depth(insns: list[tuple[int, bytes, str]], rip: int, word: int) -> int | None:
    """Bytes the function pushed before ``rip`` (None once it has set up rbp as its frame
    pointer); after a `ret` on another path, the depth its prologue left."""
    depth, prologue, in_prologue = 0, 0, True
    for at, _, text in insns:
        if at >= rip:
            break
        mnemonic, _, operands = text.partition(" ")
        if operands in ("rbp, rsp", "ebp, esp") and mnemonic == "mov":
            return None
        if mnemonic == "push":
            depth += word
        elif mnemonic == "pop":
            depth -= word
        elif mnemonic in ("sub", "add") and operands.startswith(("rsp, ", "esp, ")):
            try:
                amount = int(operands.split(", ", 1)[1], 0)
            except ValueError:
                amount = 0
            depth += amount if mnemonic == "sub" else -amount
        elif mnemonic == "ret":
            depth = prologue
            continue
        elif in_prologue and not mnemonic.startswith("lea"):
            prologue, in_prologue = depth, False
    return depth


def _in_code(target: Target, address: int, pid: int | None) -> bool:
    """Whether ``address`` can be a return address: inside an image (an app, ntdll, a
    driver) or a kernel export's trap address."""
    return address == kernel.KERNEL_RETURN or target.image_at(address, pid) is not None or \
        not target.symbolize(address, pid).startswith("0x")


def _nonzero(value: int) -> int | None:
    return value or None


def _word(target: Target, address: int, word: int, pid: int | None) -> int:
    return int.from_bytes(target.read_virtual(address, word, pid), "little")


def _name(target: Target, address: int, pid: int | None) -> str:
    """The symbol of ``address``, or the kernel area it is in (a pool, a stack...)."""
    label = target.symbolize(address, pid)
    if label.startswith("0x") and address >= layout.KERNEL_SPACE_START:
        return f"{label} ({kernel_area(address, target.images())})"
    return label


def backtrace_lines(target: Target, pid: int | None = None) -> list[str]:
    """``#0  0x0000000000401022 in badread!main+0x22`` per frame."""
    frames, why = backtrace(target, pid)
    lines = [f"#{i:<2} {a:#018x} in {_name(target, a, pid)}" for i, a in enumerate(frames)]
    if why:
        lines.append(f"    ({why})")
    return lines
