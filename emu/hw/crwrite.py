"""MOV to CR0, CR3 and CR4 executed by guest code (a driver at ring 0), made to reach the CPU.

SDM Vol. 2B "MOV - Move to/from Control Registers" and Vol. 3A 4.10.4.1: a MOV to CR3
invalidates the current PCID's non-global translations (without CR4.PCIDE: all of them
but the global ones), and none with bit 63 set (PCIDE only; bit 63 is not stored); a MOV
to CR4 that changes PGE, or clears PCIDE, invalidates everything; CR0.WP, CR4.SMEP and
CR4.SMAP decide what the page walker grants. Unicorn executes the MOV itself and changes
QEMU's register only: the machine's copies (``Cpu.cr0``/``cr3``/``cr4``, which the Python
walker, the STLB's PCID tags and its cached rights use) would never see it, and QEMU keeps
bit 63 in CR3 and sets reserved CR4 bits without a fault (measured, Unicorn 2.1.4). So the
machine finds guest MOVs to CR0/CR3/CR4 and makes them with ``Cpu.check_control`` and
``Cpu.guest_control`` (the executive's own ``set_control`` rules), exactly as emu.hw.invlpg
finds INVLPGs:

* **Code in driver images** (``watch``, at load time): the executable pages of each image
  are scanned once for the bytes of MOV CRn, r64 (0F 22 /r, n = 0, 3 or 4, no REX.R), each
  hit confirmed by decoding it; a code hook goes on each MOV and on the boundary after it.
  The first hook checks the value (the source register, as the MOV will see it): a value
  the SDM refuses is #GP(0) at the MOV, nothing changed; otherwise the MOV is noted as
  executing, and the second hook, before the next instruction, completes it.
* **Code a driver writes at run time** (``watch_range``: executable NonPagedPool and the
  MDL views): one block hook over the range. QEMU ends a translated block after each MOV
  to a control register (measured), so such a MOV is the last instruction of its block:
  each block run there is decoded (kept per address and bytes) and one that ends in a MOV
  to CR0/CR3/CR4 is completed at the next block boundary or at the run's end. A refused
  value found there is #GP(0) at the MOV too: QEMU's registers are put back first.

MOV from CR0/CR3/CR4 needs no hook: QEMU's register is kept equal to the machine's (a
completed MOV to CR3 leaves it without bit 63). At CPL 3 every MOV to or from a control
register is #GP(0), which Unicorn raises itself (STATUS_PRIVILEGED_INSTRUCTION).

Not covered (as for INVLPG): ring-0 code that is neither in a driver image nor in those
ranges, and a MOV written over an image's code after it was scanned.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from unicorn import UC_HOOK_BLOCK, UC_HOOK_CODE, Uc
from unicorn import x86_const as ux

from emu.hw.faultaddr import decode, disassembler

if TYPE_CHECKING:
    from emu.hw.cpu import Cpu

MAX_INSTRUCTION = 15                           # bytes (SDM Vol. 2A 2.3.11)
CONTROL_REGISTERS = ("cr0", "cr3", "cr4")
# An optional REX byte without REX.R (0x40-0x43, 0x48-0x4B: REX.R would name CR8-CR15),
# 0F 22 (MOV CRn, r64), then a ModRM whose reg field is 0, 3 or 4 (the mod field is
# ignored: SDM Vol. 2B, MOV CR). The scan looks for these bytes; capstone confirms.
_MODRM = bytes(m for m in range(256) if (m >> 3) & 7 in (0, 3, 4))
_MOV_CR = re.compile(rb"(?=[\x40-\x43\x48-\x4b]?\x0f\x22[" + re.escape(_MODRM) + rb"])")
_PREFIXES = frozenset(b"\x26\x2e\x36\x3e\x64\x65\x66\x67\xf0\xf2\xf3")


@dataclass(frozen=True)
class CrMove:
    """One MOV to CR0, CR3 or CR4 in guest code: its address, length, the control register
    and the general-purpose register it is loaded from."""

    address: int
    size: int
    control: str                # "cr0", "cr3" or "cr4"
    source: int                 # the UC_X86_REG_* of the 64-bit source register

    @property
    def end(self) -> int:
        """The address of the instruction after it."""
        return self.address + self.size


def decode_move(va: int, code: bytes) -> CrMove | None:
    """The MOV to CR0/CR3/CR4 that starts ``code`` (at ``va``, 64-bit code), or None."""
    from capstone import x86_const as cx  # imported by the first decode, not at start-up

    insn = decode(code, va)
    if insn is None or insn.mnemonic != "mov" or len(insn.operands) != 2:
        return None
    dst, src = insn.operands
    if dst.type != cx.X86_OP_REG or src.type != cx.X86_OP_REG:
        return None
    control, source = insn.reg_name(dst.reg), insn.reg_name(src.reg)
    if control not in CONTROL_REGISTERS or not source.startswith("r"):
        return None
    return CrMove(va, insn.size, control, getattr(ux, f"UC_X86_REG_{source.upper()}"))


def find_moves(va: int, code: bytes) -> list[CrMove]:
    """Every instruction start in ``code`` (loaded at ``va``) that is a MOV to CR0, CR3 or
    CR4, found by its bytes and confirmed by decoding it (any start, prefixes included)."""
    moves: dict[int, CrMove] = {}
    for match in _MOV_CR.finditer(code):
        start = match.start()
        first = start
        while first > 0 and start - first < MAX_INSTRUCTION - 4 and code[first - 1] in _PREFIXES:
            first -= 1
        for at in range(first, start + 1):
            move = decode_move(va + at, code[at:at + MAX_INSTRUCTION])
            if move is not None:
                moves[move.address] = move
    return sorted(moves.values(), key=lambda m: m.address)


def block_move(va: int, code: bytes) -> CrMove | None:
    """The MOV to CR0/CR3/CR4 that ends the translated block ``code`` at ``va``, or None
    (QEMU ends a block after each such MOV, so it can only be the last instruction)."""
    last = None
    for offset, _size, mnemonic, _ops in disassembler(64).disasm_lite(code, 0):
        last = (offset, mnemonic)
    if last is None or last[1] != "mov":
        return None
    move = decode_move(va + last[0], code[last[0]:])
    return move if move is not None and move.end == va + len(code) else None


class CrWrite:
    """The guest MOVs to CR0/CR3/CR4 of one CPU: the hooks that make each one reach the
    CPU's own control registers (``Cpu.guest_control``) when it completes."""

    def __init__(self, cpu: Cpu) -> None:
        self._cpu = cpu
        self._uc: Uc = cpu.uc
        self._moves: dict[int, CrMove] = {}
        self._hooks: dict[int, int] = {}          # hooked address -> Unicorn hook handle
        self._executing: tuple[CrMove, int] | None = None   # the MOV and its value
        self._ranges: dict[tuple[int, int], int] = {}   # watched run-time code -> its hook
        self._blocks: dict[tuple[int, bytes], CrMove | None] = {}   # decoded blocks
        self.completed = 0                         # guest MOVs made to reach the CPU

    @property
    def moves(self) -> list[CrMove]:
        """The MOVs hooked now (found in loaded images), by address."""
        return [self._moves[a] for a in sorted(self._moves)]

    def watch(self, va: int, code: bytes) -> list[CrMove]:
        """Hook the MOVs to CR0/CR3/CR4 of ``code``, executable and loaded at ``va``;
        translated code is flushed so that no block translated before runs without them."""
        found = [m for m in find_moves(va, code) if m.address not in self._moves]
        for move in found:
            self._moves[move.address] = move
        self._rehook()
        if found:
            self._cpu.flush_translated_code()
        return found

    def unwatch(self, start: int, end: int) -> None:
        """Forget the MOVs that start in [start, end): that code is gone."""
        gone = [a for a in self._moves if start <= a < end]
        for address in gone:
            del self._moves[address]
        if gone:
            self._rehook()

    def watch_range(self, start: int, end: int) -> None:
        """Decode each block run in [start, end) (code written there at run time): a MOV
        to CR0/CR3/CR4 there reaches the CPU as one found at load time does. Call it before
        any code runs there (Unicorn hooks only the code it translates afterwards)."""
        if (start, end) in self._ranges:
            return
        self._ranges[(start, end)] = self._uc.hook_add(UC_HOOK_BLOCK, self._on_block, None,
                                                       start, end - 1)

    def _rehook(self) -> None:
        """One code hook on each MOV and on each boundary after one, and on nothing else."""
        wanted = set(self._moves) | {m.end for m in self._moves.values()}
        for address in set(self._hooks) - wanted:
            self._uc.hook_del(self._hooks.pop(address))
        for address in sorted(wanted - set(self._hooks)):
            self._hooks[address] = self._uc.hook_add(UC_HOOK_CODE, self._on_boundary, None,
                                                     address, address)

    def settle(self) -> None:
        """After a run: complete a MOV the run ended right after (RIP at its end); one the
        run stopped before is forgotten (it runs again)."""
        executing, self._executing = self._executing, None
        if executing is not None and self._cpu.rip == executing[0].end:
            self._complete(*executing)

    def _complete(self, move: CrMove, value: int | None) -> None:
        """The MOV completed: the CPU's register takes the value. ``value`` None: a MOV in
        run-time code, whose value is read now (a MOV to a control register writes no
        general-purpose register) and checked now; refused, it is #GP(0) at the MOV with
        QEMU's registers put back as they were."""
        from emu.hw.cpu import ControlRegisterFault, CpuException, Vector

        cpu = self._cpu
        if value is None:
            value = self._uc.reg_read(move.source)
            try:
                cpu.check_control(**{move.control: value})
            except ControlRegisterFault as fault:
                cpu.resync_control()
                cpu.set_reg("rip", move.address)
                cpu.raise_fault(CpuException(Vector.GP, move.address, 0,
                                             reason=f"{fault} (mov {move.control})"))
                return
        self.completed += 1
        cpu.guest_control(move.control, value)

    def _on_boundary(self, uc: Uc, address: int, _size: int, _data) -> None:
        """UC_HOOK_CODE before a MOV, or before the instruction after one."""
        self._boundary(address, self._moves.get(address), True)

    def _on_block(self, uc: Uc, address: int, size: int, _data) -> None:
        """UC_HOOK_BLOCK at the entry of a block of a watched range: does it end in a MOV
        to CR0/CR3/CR4 (its bytes now, whatever was there before)?"""
        cpu = self._cpu
        if cpu.held_fault:
            return
        code = cpu.read_code(address, size)
        key = (address, code)
        if key not in self._blocks:
            if len(self._blocks) >= 4096:
                self._blocks.clear()
            self._blocks[key] = block_move(address, code) if len(code) == size else None
        self._boundary(address, self._blocks[key], False)

    def _boundary(self, address: int, move: CrMove | None, exact: bool) -> None:
        """At an instruction (or block) boundary: complete the MOV that just ran, then, if
        ``move`` is one about to run at ring 0, note that it is executing; ``exact``: the
        hook is on the MOV itself, so its value is known and checked now (SDM Vol. 2B MOV
        CR: #GP(0), nothing changed, for a value refused)."""
        from emu.hw.cpu import ControlRegisterFault, CpuException, Vector

        cpu = self._cpu
        if cpu.held_fault:
            return
        done, self._executing = self._executing, None
        if done is not None and done[0].end == address:
            self._complete(*done)
            if cpu.held_fault:
                return
        if move is None or cpu.cpl != 0:
            return                          # at CPL 3 it is Unicorn's own #GP(0)
        if not exact:
            self._executing = (move, None)
            return
        value = self._uc.reg_read(move.source)
        try:
            cpu.check_control(**{move.control: value})
        except ControlRegisterFault as fault:
            cpu.raise_fault(CpuException(Vector.GP, address, 0,
                                         reason=f"{fault} (mov {move.control})"))
            return
        self._executing = (move, value)
