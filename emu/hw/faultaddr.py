"""The exact linear address of a faulting access: what the CPU writes to CR2.

Unicorn's TLB-fill hook is told only the page of a miss (platform-facts.md),
but the SDM says CR2 holds the linear address that faulted (Vol. 3A §4.7).
The CPU knows it because it computed the address; we recompute it the same
way: decode the faulting instruction with Capstone, form each memory
operand's effective address (segment base + base + index * scale + disp, or
the implicit stack and string addresses), and take the access that touches the
faulting page. An access that starts on the page before and runs into the
faulting page reports the first byte of that page, as the CPU does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import capstone

# Capstone is imported by the first decode, not by this module: a run that never reports a
# fault never pays for it (docs/performance.md, start-up).

PAGE_MASK = ~0xFFF & 0xFFFF_FFFF_FFFF_FFFF
_MASK64 = 0xFFFF_FFFF_FFFF_FFFF

_PUSHES = {"push", "pushfq", "pushf", "call"}
_POPS = {"pop", "popfq", "popf", "ret", "leave", "iretq", "iret"}
_STRING_SRC = {"movs", "lods", "cmps", "outs"}
_STRING_DST = {"movs", "stos", "scas", "cmps", "ins"}


@dataclass(frozen=True)
class MemoryAccess:
    """One data access an instruction makes: where, how wide, and whether it writes."""

    address: int
    size: int
    write: bool


_DISASM: dict[int, capstone.Cs] = {}


def disassembler(bits: int = 64) -> capstone.Cs:
    """A shared Capstone decoder with operand details for 64- or 32-bit code."""
    if bits not in _DISASM:
        import capstone

        md = capstone.Cs(capstone.CS_ARCH_X86,
                         capstone.CS_MODE_64 if bits == 64 else capstone.CS_MODE_32)
        md.detail = True
        _DISASM[bits] = md
    return _DISASM[bits]


def decode(code: bytes, rip: int, bits: int = 64) -> capstone.CsInsn | None:
    """Decode the single instruction at ``rip`` from ``code``, or None if undecodable."""
    for insn in disassembler(bits).disasm(code, rip, count=1):
        return insn
    return None


def memory_accesses(insn: capstone.CsInsn, reg: Callable[[str], int],
                    bits: int = 64) -> list[MemoryAccess]:
    """Every data access ``insn`` makes, given ``reg(name)`` -> value (fs_base/gs_base too)."""
    import capstone  # loaded already: ``insn`` came from it
    from capstone import x86_const as cx

    accesses: list[MemoryAccess] = []
    for op in insn.operands:
        if op.type != cx.X86_OP_MEM:
            continue
        mem = op.mem
        ea = mem.disp
        if mem.base == cx.X86_REG_RIP:
            ea += insn.address + insn.size
        elif mem.base:
            ea += reg(insn.reg_name(mem.base))
        if mem.index and insn.reg_name(mem.index) not in ("riz", "eiz"):
            # (riz/eiz: Capstone's name for a SIB byte with no index register: zero)
            ea += reg(insn.reg_name(mem.index)) * mem.scale
        if mem.segment in (cx.X86_REG_FS, cx.X86_REG_GS):
            ea += reg(insn.reg_name(mem.segment) + "_base")
        write = bool(op.access & capstone.CS_AC_WRITE)
        if insn.mnemonic == "lea":
            continue
        accesses.append(MemoryAccess(ea & _MASK64, op.size or 1, write))
    accesses.extend(_implicit_accesses(insn, reg, bits // 8))
    return accesses


def _implicit_accesses(insn: capstone.CsInsn, reg: Callable[[str], int],
                       width: int) -> list[MemoryAccess]:
    """Stack and string accesses that Capstone does not list as operands."""
    name = insn.mnemonic.split()[-1]
    rsp = reg("rsp")
    if name in _PUSHES:
        return [MemoryAccess((rsp - width) & _MASK64, width, True)]
    if name in _POPS:
        return [MemoryAccess(rsp, width, False)]
    base = name.rstrip("bwdq") if name[:4] in {"movs", "lods", "stos", "cmps", "scas"} else name
    out = []
    if base in _STRING_SRC:
        out.append(MemoryAccess(reg("rsi"), 8, False))
    if base in _STRING_DST:
        out.append(MemoryAccess(reg("rdi"), 8, base in {"movs", "stos", "ins"}))
    return out


def fault_address(insn: capstone.CsInsn | None, reg: Callable[[str], int], page: int,
                  access: str, bits: int = 64) -> int:
    """The CR2 value for a fault on ``page`` by ``access`` (read/write/fetch) of ``insn``.
    A fetch faults at RIP itself, or at the first byte of the page an instruction runs into."""
    if access == "fetch":
        rip = reg("rip")
        return rip if rip & PAGE_MASK == page else page
    if insn is None:
        return page
    candidates = memory_accesses(insn, reg, bits)
    # Prefer an access of the kind that faulted; a push of [rax] both reads and writes.
    for want_write in (access == "write", access != "write"):
        for acc in candidates:
            if acc.write != want_write:
                continue
            first, last = acc.address, acc.address + max(acc.size, 1) - 1
            if first & PAGE_MASK == page:
                return first
            if first < page <= last:
                return page
    return page
