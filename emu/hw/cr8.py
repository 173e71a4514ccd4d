"""CR8, the task-priority register as 64-bit mode exposes it: on x64 Windows, the IRQL.

SDM Vol. 3A 10.8.6 ("Task Priority in IA-32e Mode"): MOV CR8 reads and writes the
task-priority class, CR8[3:0] = TPR[7:4]; bits 63:4 are reserved, and a MOV to CR8 that
sets any of them is #GP(0) (SDM Vol. 2B, "MOV - Move to/from Control Registers"). Only
CPL 0 may move to or from CR8: at CPL 3 it is #GP(0), which Unicorn raises itself. The
WDK's wdm.h inlines KeGetCurrentIrql, KeLowerIrql and KfRaiseIrql on x64 as
``__readcr8``/``__writecr8``: the IRQL is this register.

Unicorn 2.1.4 routes CR8 to an APIC it does not have (platform-facts.md): a guest
``mov cr8, r`` is dropped and ``mov r, cr8`` reads 0, although ``reg_read``/``reg_write`` of
UC_X86_REG_CR8 keep a value (and a saved context holds it). So the machine finds the CR8
moves itself, once, in the executable pages of the kernel code it loads (``watch``: a
driver image's sections), and puts code hooks on just those addresses and the ones after
them: the move's effect on the register Unicorn keeps is made at the boundary after it
(see ``Cr8``). Nothing else is hooked: user code runs as fast as before, and a ring-3
``mov cr8`` stays Unicorn's #GP(0).
``unwatch`` drops the hooks of pages whose code goes (a driver unloaded, INIT freed).

Code written at run time (a driver's copy into executable pool) has no load-time scan:
``watch_range`` puts one code hook on such a range, and each instruction run there is
looked at as it runs (its bytes read through the page tables, a CR8 move confirmed by
decoding) and made to work the same way. Unicorn emits a range hook's call only into the
code it translates inside the range, so code that never runs there pays nothing.
The table of moves, their hooks, the ranges and ``settle`` are emu.hw.sites' (shared with
emu.hw.invlpg and emu.hw.crwrite); this module says what a CR8 move is and does.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from unicorn import UC_HOOK_CODE
from unicorn import x86_const as ux

from emu.hw.exceptions import CpuException, Vector
from emu.hw.faultaddr import decode
from emu.hw.sites import Sites, find_sites

if TYPE_CHECKING:
    from emu.hw.cpu import Cpu

CR8_RESERVED = ~0xF & 0xFFFF_FFFF_FFFF_FFFF    # bits 63:4 (SDM Vol. 3A 10.8.6)
# REX with REX.R (0x44-0x47, 0x4C-0x4F: it selects CR8 rather than CR0), 0F 20 (MOV r64,
# CRn) or 0F 22 (MOV CRn, r64), then a ModRM whose reg field is 0 (CR0 + REX.R = CR8; the
# mod field is ignored, SDM Vol. 2B). The scan looks for these bytes; capstone confirms.
_CR8_MOVE = re.compile(rb"(?=[\x44-\x47\x4c-\x4f]\x0f[\x20\x22][\x00-\x07\x40-\x47\x80-\x87"
                       rb"\xc0-\xc7])")
# The same, at the start of one instruction (after any legacy prefixes): the run-time check.
_CR8_MOVE_AT_START = re.compile(rb"[\x26\x2e\x36\x3e\x64\x65\x66\x67\xf0\xf2\xf3]*"
                                rb"[\x44-\x47\x4c-\x4f]\x0f[\x20\x22]")


@dataclass(frozen=True)
class Cr8Move:
    """One ``mov`` to or from CR8 in loaded code: its address, length, direction and GPR."""

    address: int
    size: int
    write: bool                 # True: mov cr8, reg; False: mov reg, cr8
    register: int               # the UC_X86_REG_* of the general-purpose register

    @property
    def end(self) -> int:
        """The address of the instruction after it."""
        return self.address + self.size


def find_moves(va: int, code: bytes) -> list[Cr8Move]:
    """Every instruction start in ``code`` (loaded at ``va``) that is a MOV to or from CR8,
    found by its bytes and confirmed by decoding it (any start, prefixes included)."""
    return find_sites(va, code, _CR8_MOVE, _decode_move, 4)


def _decode_move(va: int, code: bytes) -> Cr8Move | None:
    from capstone import x86_const as cx  # loaded by decode: imported late for start-up

    insn = decode(code, va)
    if insn is None or insn.mnemonic != "mov" or len(insn.operands) != 2:
        return None
    regs = [insn.reg_name(op.reg) if op.type == cx.X86_OP_REG else None
            for op in insn.operands]
    if regs[0] == "cr8" and regs[1] not in (None, "cr8"):
        write, gpr = True, regs[1]
    elif regs[1] == "cr8" and regs[0] not in (None, "cr8"):
        write, gpr = False, regs[0]
    else:
        return None
    return Cr8Move(va, insn.size, write, getattr(ux, f"UC_X86_REG_{gpr.upper()}"))


class Cr8(Sites[Cr8Move]):
    """CR8 of one CPU: its value (the register Unicorn keeps) and the hooks that make guest
    ``mov`` to and from it work.

    Each CR8 move is hooked at its own address and at the instruction boundary after it
    (emu.hw.sites). The first hook notes that the move is executing (Unicorn then runs it:
    a dropped write, or a read that loads 0); the second, before the next instruction,
    completes it: the write reaches CR8, or the read's register gets CR8. So a stop before
    the move (a breakpoint, the budget's end) leaves everything as it was, and one after it
    sees it done. A run that ends at that boundary completes it in ``settle``. (Stepping
    over the move by writing RIP from its hook would not do: measured on Unicorn 2.1.4, the
    hooks registered after it for the same instruction still run, and a debugger's
    breakpoint there then stops after the move instead of before it.) Code written at run
    time is looked at instruction by instruction (a code hook over each watched range)."""

    RUNTIME_HOOK = UC_HOOK_CODE                # run-time code: each instruction looked at
    moves = Sites.sites                        # the CR8 moves hooked now, by address
    find = staticmethod(find_moves)

    def __init__(self, cpu: Cpu) -> None:
        super().__init__(cpu)
        # Called after a guest write changed CR8, with (old, new): True asks the CPU to
        # stop at the boundary after the write (the executive has interrupts or DPCs to
        # deliver now).
        self.on_write: Callable[[int, int], bool] | None = None

    @property
    def value(self) -> int:
        """CR8 (the IRQL on x64 Windows), 0-15."""
        return self._uc.reg_read(ux.UC_X86_REG_CR8)

    @value.setter
    def value(self, level: int) -> None:
        if level & CR8_RESERVED:
            raise ValueError(f"CR8 is 4 bits wide (SDM Vol. 3A 10.8.6): {level:#x}")
        self._uc.reg_write(ux.UC_X86_REG_CR8, level)

    def runtime_site(self, address: int, code: bytes) -> Cr8Move | None:
        """The CR8 move that is the instruction ``code`` at ``address``, or None."""
        return _decode_move(address, code) if _CR8_MOVE_AT_START.match(code) else None

    def begin(self, site: Cr8Move, exact: bool) -> tuple[Cr8Move, None] | None:
        """A MOV to CR8 that sets a bit of 63:4 is #GP(0) at it, CR8 unchanged (SDM Vol. 2B,
        MOV CR); any other move is noted as executing."""
        value = self._uc.reg_read(site.register)
        if site.write and value & CR8_RESERVED:
            self._cpu.raise_fault(CpuException(Vector.GP, site.address, 0, reason=(
                f"#GP(0): mov cr8 with {value:#x}, and CR8 bits 63:4 are reserved")))
            return None
        return (site, None)

    def complete(self, site: Cr8Move, _state: None) -> bool:
        """The move's effect (SDM Vol. 2B, MOV): CR8 written, or the register loaded with
        CR8 zero-extended; True when a write asks for the executive."""
        if not site.write:
            self._uc.reg_write(site.register, self.value)
            return False
        old, new = self.value, self._uc.reg_read(site.register)
        self.value = new
        return self.on_write is not None and self.on_write(old, new)
