"""What the block counter learns of a translated block from its bytes (emu/hw/native.py):
where each of its instructions begins, and how many of its first ones are inert.

A function of the bytes alone (and the code's width), decoded by Capstone and kept for the
process, so that a process's later machines learn the blocks they share without decoding
them again.
"""

from __future__ import annotations

from functools import cache, lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import capstone


@lru_cache(maxsize=1 << 14)
def instruction_offsets(bits: int, code: bytes) -> tuple[tuple[int, ...], int]:
    """The offsets of the instructions of the block ``code`` (``bits``-bit code): what
    Capstone decodes, then the rest as one (an undecodable instruction, which QEMU
    translates as the #UD it raises, ends a block); and how many of its first instructions
    are inert (``inert``). A function of the bytes alone, so a process's later machines
    (the debugger's re-executions, a query's machine, a bench's next run) learn blocks they
    share without decoding them again (about 13 us a block)."""
    offsets, end, inert_count, leading = [], 0, 0, True
    for offset, length, mnemonic, operands in _capstone(bits).disasm_lite(code, 0):
        offsets.append(offset)
        end = offset + length
        if leading and inert(mnemonic, operands):
            inert_count += 1
        else:
            leading = False
    if end < len(code):
        offsets.append(end)
    return tuple(offsets) or (0,), inert_count


# -- inert instructions: a quantum renewed before them cannot be told apart -----------------
#
# An instruction is inert when it accesses no memory (explicitly or implicitly: no stack,
# string, descriptor-table or I/O access) and can raise no exception and no trap, whatever
# the CPU's state; a quantum's renewal (KUSER_SHARED_DATA's times, the next budget) made
# before a run of them is then invisible (emu/hw/native.c renew_early). An allow-list, from
# the "Exceptions" sections of the SDM Vol. 2 entries, of integer instructions on general-
# purpose registers and immediates whose only exceptions there are #UD for a LOCK prefix
# (refused: Capstone names it in the mnemonic, "lock add", or does not decode the register
# form, and either way it is not listed) and the memory-operand faults (#GP, #SS, #PF, #AC:
# no operand here may be memory, below). Left out on purpose: DIV and IDIV (#DE), BOUND,
# INTO, INT/INT3/UD2, anything privileged, I/O, system, x87/MMX/SSE/AVX (#UD or #NM by
# CR0/CR4), CPUID/RDTSC/RDPID (exits, hooks, CR4.TSD), POPCNT/LZCNT/TZCNT/BMI (#UD by
# CPUID), LAHF/SAHF (#UD by CPUID in 64-bit mode), PUSH/POP/CALL/RET/ENTER/LEAVE/PUSHF/POPF
# /IRET, string instructions, XLAT, CMPXCHG/XADD (both rare in compute loops), and every
# control transfer (a translated block's last instruction, never before the budget's end).
_INERT_MNEMONICS = frozenset({
    "mov", "movabs", "movzx", "movsx", "movsxd",
    "add", "adc", "sub", "sbb", "and", "or", "xor", "cmp", "test",
    "inc", "dec", "neg", "not", "imul", "mul",
    "shl", "sal", "shr", "sar", "rol", "ror", "rcl", "rcr", "shld", "shrd",
    "bt", "bts", "btr", "btc", "bswap", "xchg",
    "cbw", "cwde", "cdqe", "cwd", "cdq", "cqo", "clc", "stc", "cmc",
    *(f"cmov{cc}" for cc in ("o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p",
                             "np", "l", "ge", "le", "g")),
    *(f"set{cc}" for cc in ("o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p",
                            "np", "l", "ge", "le", "g")),
})
# LEA computes an address and accesses no memory (SDM Vol. 2A LEA: its only exception is
# #UD for a register source); the multi-byte NOP's memory operand is never accessed (SDM
# Vol. 2B NOP: an operation that does nothing; QEMU decodes its ModRM and emits no load);
# and ENDBR32/ENDBR64 are NOPs while CET is off (SDM Vol. 2A ENDBR64), which it always is
# here (setting CR4.CET is #GP(0): emu.hw.cpu CR4_RESERVED).
_INERT_ANY_OPERANDS = frozenset({"lea", "nop", "endbr64", "endbr32"})
# The general-purpose registers by Capstone's names: any other register operand (a segment,
# control, debug, x87 or vector register) makes the instruction not inert (MOV to a
# segment register faults, MOV to or from CRn/DRn is privileged).
_GPRS = frozenset(
    [f"{p}{r}" for p in ("r", "e") for r in ("ax", "bx", "cx", "dx", "si", "di", "sp", "bp")]
    + ["ax", "bx", "cx", "dx", "si", "di", "sp", "bp", "al", "bl", "cl", "dl", "ah", "bh",
       "ch", "dh", "spl", "bpl", "sil", "dil"]
    + [f"r{n}{s}" for n in range(8, 16) for s in ("", "d", "w", "b")])


def inert(mnemonic: str, operands: str) -> bool:
    """Whether the instruction Capstone decoded as ``mnemonic operands`` is inert: on the
    allow-list, with only general-purpose register and immediate operands (LEA and NOP:
    any). A memory operand is written ``[...]`` by Capstone, so none passes."""
    if mnemonic in _INERT_ANY_OPERANDS:
        return True
    if mnemonic not in _INERT_MNEMONICS:
        return False
    return all(operand in _GPRS or _immediate(operand)
               for operand in operands.split(", ") if operand)


def _immediate(operand: str) -> bool:
    """Whether a Capstone operand is an immediate (``5``, ``0x10``, ``-0x10``)."""
    digits = operand.removeprefix("-")
    if digits.startswith("0x"):
        digits = digits[2:]
        return bool(digits) and all(c in "0123456789abcdef" for c in digits)
    return digits.isdigit()


@cache
def _capstone(bits: int) -> capstone.Cs:
    """A Capstone decoder for ``bits``-bit code (no detail: lengths only)."""
    import capstone  # imported by the first block learnt, not at start-up

    return capstone.Cs(capstone.CS_ARCH_X86,
                       capstone.CS_MODE_64 if bits == 64 else capstone.CS_MODE_32)
