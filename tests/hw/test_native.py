"""Tests for emu/hw/native.py: the STLB in front of the Python walker, and the counter.

Each test drives a real Unicorn in UC_TLB_VIRTUAL mode over RAM in an mmap, running a few
hand-assembled instructions; the walker is scripted (identity map unless a rule says
otherwise) and records every call, so a test can tell an STLB hit from a walk.
"""

from __future__ import annotations

import ctypes
import gc
import mmap
import os
import shutil
import struct
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import capstone
import pytest
from unicorn import (
    UC_ARCH_X86,
    UC_CTL_IO_WRITE,
    UC_CTL_TLB_FLUSH,
    UC_ERR_EXCEPTION,
    UC_ERR_INSN_INVALID,
    UC_HOOK_CODE,
    UC_HOOK_INSN,
    UC_HOOK_INTR,
    UC_HOOK_MEM_READ,
    UC_HOOK_MEM_WRITE,
    UC_MODE_64,
    UC_PROT_ALL,
    UC_TLB_VIRTUAL,
    Uc,
    UcError,
)
from unicorn.x86_const import (
    UC_X86_INS_SYSCALL,
    UC_X86_REG_CS,
    UC_X86_REG_GDTR,
    UC_X86_REG_RAX,
    UC_X86_REG_RBX,
    UC_X86_REG_RCX,
    UC_X86_REG_RDX,
    UC_X86_REG_RFLAGS,
    UC_X86_REG_RIP,
    UC_X86_REG_RSI,
    UC_X86_REG_RSP,
)

from emu.hw import native
from emu.hw.native import DENY, Access, Fill, NativeHooks

RAM_SIZE = 16 << 20
CODE = 0x400000  # the guest's code page
STACK_TOP = 0x800000
PAGE_A = 0x200000  # data pages the rules script
PAGE_B = 0x201000
RWX = Fill.READ | Fill.WRITE | Fill.EXEC
RFLAGS_AC = 1 << 18  # Alignment Check
VECTOR_DE = 0  # #DE, divide error
VECTOR_BP = 3  # #BP, int3
BIG_BUDGET = 1 << 40

Rule = Callable[[int, int, int, int], int]


# --- a tiny assembler: the few encodings the tests need (Intel SDM Vol. 2) -------------


@dataclass(frozen=True)
class Label:
    name: str


@dataclass(frozen=True)
class Rel:
    """A displacement to a label, measured from the end of this field."""

    name: str
    size: int  # 1 or 4


def assemble(*parts: bytes | Label | Rel) -> bytes:
    """Concatenate encodings, resolving Rel fields against Label positions."""
    labels, offset = {}, 0
    for part in parts:
        if isinstance(part, Label):
            labels[part.name] = offset
        else:
            offset += part.size if isinstance(part, Rel) else len(part)
    out = bytearray()
    for part in parts:
        if isinstance(part, Rel):
            out += (labels[part.name] - len(out) - part.size).to_bytes(
                part.size, "little", signed=True
            )
        elif isinstance(part, bytes):
            out += part
    return bytes(out)


def imm32(value: int) -> bytes:
    return value.to_bytes(4, "little")


NOP = b"\x90"
HLT = b"\xf4"
INT3 = b"\xcc"
SYSCALL = b"\x0f\x05"
UD2 = b"\x0f\x0b"
IRETQ = b"\x48\xcf"
DIV_BY_ZERO = b"\x31\xc9\xf7\xf1"  # xor ecx, ecx ; div ecx
REP_MOVSB = b"\xf3\xa4"


def load_al(address: int) -> bytes:
    return b"\x8a\x04\x25" + imm32(address)  # mov al, [address]


def store_al(address: int) -> bytes:
    return b"\x88\x04\x25" + imm32(address)  # mov [address], al


def mov_ecx(value: int) -> bytes:
    return b"\xb9" + imm32(value)


def push(value: int) -> bytes:
    return b"\x68" + imm32(value)  # push imm32 (sign-extended)


# --- the rig -----------------------------------------------------------------------------


def bare_machine(code: bytes) -> tuple[Uc, mmap.mmap]:
    """An x86-64 Unicorn at CPL 0 in UC_TLB_VIRTUAL mode, its RAM an mmap holding `code`."""
    ram = mmap.mmap(-1, RAM_SIZE)
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.ctl_set_tlb_mode(UC_TLB_VIRTUAL)
    uc.mem_map_ptr(0, RAM_SIZE, UC_PROT_ALL, ctypes.addressof(ctypes.c_char.from_buffer(ram)))
    ram[CODE : CODE + len(code)] = code
    uc.reg_write(UC_X86_REG_RSP, STACK_TOP)
    uc.reg_write(UC_X86_REG_RIP, CODE)
    return uc, ram


DECODER = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)


@pytest.fixture(autouse=True, params=["block", "instruction"])
def counter(request, monkeypatch) -> str:
    """Every test runs with both counters: per translated block (the default) and per
    instruction (the reference)."""
    monkeypatch.setattr(native, "PER_INSTRUCTION", request.param == "instruction")
    return request.param


class Rig:
    """A bare machine with NativeHooks and a scripted, recording walker."""

    def __init__(self, code: bytes) -> None:
        self.uc, self.ram = bare_machine(code)
        self.rules: dict[int, Rule] = {}
        self.calls: list[tuple[int, int, int, int]] = []
        self.learnt: list[tuple[int, int]] = []
        self.hooks = NativeHooks(self.uc, self.walk, self.block)

    def block(self, pc: int, size: int) -> tuple[list[int], int]:
        """The instruction offsets of a block (identity map: RAM holds it at pc), and where
        its bytes are: every page is writable here."""
        self.learnt.append((pc, size))
        at = pc % RAM_SIZE
        code = bytes(self.ram[at : at + size])
        base = ctypes.addressof(ctypes.c_char.from_buffer(self.ram))
        return [offset for offset, *_ in DECODER.disasm_lite(code, 0)], base + at

    def walk(self, vpage: int, access: int, cpl: int, rflags: int) -> int:
        self.calls.append((vpage, access, cpl, rflags))
        rule = self.rules.get(vpage)
        return rule(vpage, access, cpl, rflags) if rule else vpage % RAM_SIZE | RWX

    def walks_of(self, vpage: int) -> list[tuple[int, int, int, int]]:
        return [call for call in self.calls if call[0] == vpage]

    def run(self, begin: int = CODE) -> None:
        self.hooks.start(begin)

    def flush_qemu_tlb(self) -> None:
        """Empty QEMU's TLB only, so the next access to any page reaches the fill hook."""
        self.uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)

    @property
    def rip(self) -> int:
        return self.uc.reg_read(UC_X86_REG_RIP)


def stop_run(uc: Uc, *_: object) -> None:
    uc.emu_stop()


# --- the STLB ----------------------------------------------------------------------------


def test_stlb_answers_a_page_again_without_calling_python() -> None:
    rig = Rig(load_al(PAGE_A) + HLT)
    rig.run()
    assert len(rig.walks_of(PAGE_A)) == 1
    assert (rig.hooks.fills, rig.hooks.stlb_hits) == (2, 0)  # code page, data page

    rig.flush_qemu_tlb()
    rig.run()
    assert len(rig.walks_of(PAGE_A)) == 1
    assert (rig.hooks.fills, rig.hooks.stlb_hits) == (4, 2)

    rig.hooks.flush()
    rig.run()
    assert len(rig.walks_of(PAGE_A)) == 2
    assert (rig.hooks.fills, rig.hooks.stlb_hits) == (6, 2)


def test_read_only_entry_does_not_answer_a_write() -> None:
    """A walker grants WRITE only once D is set; the write must reach it."""

    def dirty_on_write(vpage: int, access: int, cpl: int, rflags: int) -> int:
        perms = Fill.READ | (Fill.WRITE if access == Access.WRITE else 0)
        return vpage | perms

    rig = Rig(load_al(PAGE_A) + store_al(PAGE_A) + HLT)
    rig.rules[PAGE_A] = dirty_on_write
    rig.run()
    assert [call[1] for call in rig.walks_of(PAGE_A)] == [Access.READ, Access.WRITE]

    rig.flush_qemu_tlb()
    rig.run()  # the READ|WRITE entry now answers both accesses
    assert len(rig.walks_of(PAGE_A)) == 2


def test_denied_access_stops_at_the_faulting_instruction() -> None:
    rig = Rig(NOP + load_al(PAGE_A) + HLT)
    rig.rules[PAGE_A] = lambda *_: DENY
    with pytest.raises(UcError) as failure:
        rig.run()
    assert failure.value.errno == UC_ERR_EXCEPTION
    assert rig.rip == CODE + 1

    with pytest.raises(UcError):
        rig.run(rig.rip)  # a denial is not cached: the walker is asked again
    assert len(rig.walks_of(PAGE_A)) == 2


def test_answer_without_the_access_faults_but_is_cached() -> None:
    rig = Rig(store_al(PAGE_A) + HLT)
    rig.rules[PAGE_A] = lambda vpage, *_: vpage | Fill.READ
    with pytest.raises(UcError):
        rig.run()
    assert rig.rip == CODE

    rig.uc.mem_write(CODE, load_al(PAGE_A))
    rig.uc.ctl_flush_tb()
    rig.flush_qemu_tlb()
    rig.run()  # the READ entry kept from the failed write serves this read
    assert len(rig.walks_of(PAGE_A)) == 1


def test_no_cache_answer_is_served_once() -> None:
    rig = Rig(load_al(PAGE_A) + HLT)
    rig.rules[PAGE_A] = lambda vpage, *_: vpage | RWX | Fill.NO_CACHE
    rig.run()
    rig.flush_qemu_tlb()
    rig.run()
    assert len(rig.walks_of(PAGE_A)) == 2


def test_invalidate_drops_only_that_page() -> None:
    rig = Rig(load_al(PAGE_A) + load_al(PAGE_B) + HLT)
    rig.run()
    rig.hooks.invalidate(PAGE_A)
    rig.run()
    assert (len(rig.walks_of(PAGE_A)), len(rig.walks_of(PAGE_B))) == (2, 1)


def test_kernel_modes_with_and_without_rflags_ac_are_cached_apart() -> None:
    rig = Rig(load_al(PAGE_A) + HLT)
    rflags = rig.uc.reg_read(UC_X86_REG_RFLAGS)
    for ac in (0, RFLAGS_AC, 0, RFLAGS_AC):
        rig.uc.reg_write(UC_X86_REG_RFLAGS, rflags & ~RFLAGS_AC | ac)
        rig.flush_qemu_tlb()
        rig.run()
    walks = rig.walks_of(PAGE_A)
    assert [(cpl, rflags & RFLAGS_AC) for _, _, cpl, rflags in walks] == [(0, 0), (0, RFLAGS_AC)]


# Flat GDT (SDM Vol. 3A 3.4.5): 64-bit code and data, ring 0 then ring 3.
GDT = 0x300000
GDT_ENTRIES = (0, 0x00AF9A000000FFFF, 0x00CF92000000FFFF, 0x00AFFA000000FFFF, 0x00CFF2000000FFFF)
USER_CS, USER_SS = 3 << 3 | 3, 4 << 3 | 3


def to_user_mode(user_rip: int) -> bytes:
    """IRETQ to `user_rip` at CPL 3 (SDM Vol. 3A 6.14.3: the 64-bit IRET frame)."""
    frame = (USER_SS, STACK_TOP - 0x1000, 0x2, USER_CS, user_rip)  # RFLAGS: reserved bit 1
    return b"".join(push(value) for value in frame) + IRETQ


def test_user_mode_is_cached_apart_from_kernel_mode() -> None:
    """Only a real IRETQ reaches CPL 3: writing CS does not change the CPL."""
    kernel = load_al(PAGE_A) + to_user_mode(0)
    code = load_al(PAGE_A) + to_user_mode(CODE + len(kernel)) + load_al(PAGE_A) + SYSCALL
    rig = Rig(code)
    rig.ram[GDT : GDT + 8 * len(GDT_ENTRIES)] = struct.pack(f"<{len(GDT_ENTRIES)}Q", *GDT_ENTRIES)
    rig.uc.reg_write(UC_X86_REG_GDTR, (0, GDT, 8 * len(GDT_ENTRIES) - 1, 0))
    rig.uc.hook_add(UC_HOOK_INSN, stop_run, None, 1, 0, UC_X86_INS_SYSCALL)
    rig.run()
    assert rig.uc.reg_read(UC_X86_REG_CS) == USER_CS
    assert rig.rip == CODE + len(code)
    # The CPL 0 entry did not answer the CPL 3 access; RFLAGS is not read at CPL 3.
    walks = rig.walks_of(PAGE_A)
    assert [(cpl, rflags) for _, _, cpl, rflags in walks] == [(0, walks[0][3]), (3, 0)]
    assert walks[0][3] != 0


SWEEP_BASE = 0x10000000
SWEEP_PAGES = 16384


def sweep() -> bytes:
    """Read one byte of each of SWEEP_PAGES pages, then syscall (whose hook stops the run)."""
    return assemble(
        b"\x48\xbb" + SWEEP_BASE.to_bytes(8, "little"),  # mov rbx, SWEEP_BASE
        mov_ecx(SWEEP_PAGES),
        Label("next"),
        b"\x8a\x03",  # mov al, [rbx]
        b"\x48\x81\xc3" + imm32(0x1000),  # add rbx, 4096
        b"\xff\xc9",  # dec ecx
        b"\x75",
        Rel("next", 1),  # jnz next
        SYSCALL,
    )


def test_stlb_holds_a_16k_page_sweep_in_each_of_the_three_modes() -> None:
    enter_user = CODE + 0x1000  # to_user_mode(CODE) lives on the next page
    rig = Rig(sweep())
    rig.ram[enter_user : enter_user + len(to_user_mode(CODE))] = to_user_mode(CODE)
    rig.ram[GDT : GDT + 8 * len(GDT_ENTRIES)] = struct.pack(f"<{len(GDT_ENTRIES)}Q", *GDT_ENTRIES)
    rig.uc.reg_write(UC_X86_REG_GDTR, (0, GDT, 8 * len(GDT_ENTRIES) - 1, 0))
    rig.uc.hook_add(UC_HOOK_INSN, stop_run, None, 1, 0, UC_X86_INS_SYSCALL)
    rflags = rig.uc.reg_read(UC_X86_REG_RFLAGS) & ~RFLAGS_AC
    kernel = rig.uc.context_save()  # restoring a context restores its CPL

    def kernel_sweep(ac: int) -> None:
        rig.uc.context_restore(kernel)
        rig.uc.reg_write(UC_X86_REG_RFLAGS, rflags | ac)
        rig.run(CODE)

    kernel_sweep(0)
    kernel_sweep(RFLAGS_AC)
    rig.run(enter_user)
    user = rig.uc.context_save()
    walks = len(rig.calls)
    assert walks >= 3 * SWEEP_PAGES

    rig.flush_qemu_tlb()
    kernel_sweep(0)
    kernel_sweep(RFLAGS_AC)
    rig.uc.context_restore(user)
    rig.run(CODE)
    assert rig.uc.reg_read(UC_X86_REG_CS) == USER_CS
    assert len(rig.calls) == walks  # every page of every mode came from the STLB
    assert rig.hooks.stlb_hits >= 3 * SWEEP_PAGES


def test_exception_in_the_walker_is_raised_by_start() -> None:
    def broken(*_: int) -> int:
        raise ValueError("walker bug")

    rig = Rig(load_al(PAGE_A) + HLT)
    rig.rules[PAGE_A] = broken
    with pytest.raises(ValueError, match="walker bug") as raised:
        rig.run()
    assert isinstance(raised.value.__cause__, UcError)
    assert rig.rip == CODE

    del rig.rules[PAGE_A]
    rig.run(rig.rip)  # the machine is still usable
    assert rig.rip == CODE + len(load_al(PAGE_A)) + len(HLT)


# --- the instruction counter -------------------------------------------------------------


def test_budget_stops_before_the_next_instruction_and_resumes() -> None:
    rig = Rig(NOP * 10 + HLT)
    rig.hooks.set_budget(4)
    rig.run()
    assert (rig.hooks.instructions, rig.rip, rig.hooks.budget) == (4, CODE + 4, 0)
    rig.hooks.set_budget(3)
    rig.run(rig.rip)
    assert (rig.hooks.instructions, rig.rip) == (7, CODE + 7)
    rig.hooks.set_budget(None)
    rig.run(rig.rip)
    assert (rig.hooks.instructions, rig.rip, rig.hooks.budget) == (7, CODE + 11, None)


def test_zero_budget_runs_nothing() -> None:
    rig = Rig(NOP + HLT)
    rig.hooks.set_budget(0)
    rig.run()
    assert (rig.hooks.instructions, rig.rip) == (0, CODE)


def test_instructions_can_be_reset() -> None:
    rig = Rig(NOP * 3 + HLT)
    rig.hooks.set_budget(BIG_BUDGET)
    rig.run()
    assert rig.hooks.instructions == 4  # hlt completes: RIP is past it
    rig.hooks.instructions = 0
    assert rig.hooks.instructions == 0


def counted(code: bytes, setup: Callable[[Rig], None] = lambda rig: None) -> tuple[Rig, int | None]:
    """Run `code` with counting on; return the rig and the UcError errno, if any."""
    rig = Rig(code)
    setup(rig)
    rig.hooks.set_budget(BIG_BUDGET)
    try:
        rig.run()
    except UcError as failure:
        return rig, failure.errno
    return rig, None


def test_denied_data_access_is_not_counted() -> None:
    rig, errno = counted(
        NOP * 3 + load_al(PAGE_A) + HLT, lambda r: r.rules.update({PAGE_A: lambda *_: DENY})
    )
    assert (errno, rig.hooks.instructions, rig.rip) == (UC_ERR_EXCEPTION, 3, CODE + 3)


def test_denied_fetch_counts_the_jump_that_completed() -> None:
    jump = b"\xe9" + (PAGE_A - (CODE + 2 + 5)).to_bytes(4, "little", signed=True)  # jmp PAGE_A
    rig, errno = counted(NOP * 2 + jump, lambda r: r.rules.update({PAGE_A: lambda *_: DENY}))
    assert (errno, rig.hooks.instructions, rig.rip) == (UC_ERR_EXCEPTION, 3, PAGE_A)


def test_fault_stopped_by_the_interrupt_hook_is_not_counted() -> None:
    vectors: list[int] = []

    def on_interrupt(uc: Uc, vector: int, _: object) -> None:
        vectors.append(vector)
        uc.emu_stop()

    rig, errno = counted(
        NOP * 3 + DIV_BY_ZERO + HLT, lambda r: r.uc.hook_add(UC_HOOK_INTR, on_interrupt)
    )
    assert (errno, vectors) == (None, [VECTOR_DE])
    assert (rig.hooks.instructions, rig.rip) == (4, CODE + 5)  # 3 nops, xor; RIP at div


def test_trap_stopped_by_the_interrupt_hook_is_counted() -> None:
    vectors: list[int] = []

    def on_interrupt(uc: Uc, vector: int, _: object) -> None:
        vectors.append(vector)
        uc.emu_stop()

    code = NOP * 3 + INT3 + NOP + HLT
    rig, errno = counted(code, lambda r: r.uc.hook_add(UC_HOOK_INTR, on_interrupt))
    assert (errno, vectors) == (None, [VECTOR_BP])
    assert (rig.hooks.instructions, rig.rip) == (4, CODE + 4)  # RIP past int3


def test_syscall_stopped_by_its_hook_is_counted() -> None:
    def setup(rig: Rig) -> None:
        rig.uc.hook_add(UC_HOOK_INSN, stop_run, None, 1, 0, UC_X86_INS_SYSCALL)

    rig, errno = counted(NOP * 3 + SYSCALL + NOP + HLT, setup)
    assert (errno, rig.hooks.instructions, rig.rip) == (None, 4, CODE + 5)


def test_invalid_opcode_is_not_counted() -> None:
    rig, errno = counted(NOP * 3 + UD2)
    assert (errno, rig.hooks.instructions, rig.rip) == (UC_ERR_INSN_INVALID, 3, CODE + 3)


def test_stop_from_a_memory_hook_leaves_the_store_to_run_again() -> None:
    """Unicorn ends the run right after the hooked store, RIP still at the storing
    instruction: it counts as not completed and runs again on resume."""
    stores: list[int] = []

    def on_write(uc: Uc, *_: object) -> None:
        stores.append(uc.reg_read(UC_X86_REG_RIP))
        if len(stores) == 1:
            uc.emu_stop()

    code = NOP * 3 + store_al(PAGE_A) + NOP + HLT
    rig, _ = counted(code, lambda r: r.uc.hook_add(UC_HOOK_MEM_WRITE, on_write))
    assert (rig.hooks.instructions, rig.rip) == (3, CODE + 3)
    rig.run(rig.rip)
    assert (rig.hooks.instructions, stores) == (6, [CODE + 3, CODE + 3])


def test_stop_from_a_write_hook_lets_the_store_land_first() -> None:
    """The write hook runs before the store, and the run ends after it with RIP still at
    the instruction: a read-modify-write run again would store twice unless the store is
    undone (what the debugger's watchpoints do, emu/debugger/session.py)."""
    seen: list[int] = []

    def on_write(uc: Uc, _access: int, _address: int, _size: int, value: int, _data) -> None:
        seen.append(value)
        uc.emu_stop()

    inc = b"\x48\xff\x04\x25" + imm32(PAGE_A)      # inc qword [PAGE_A]
    rig, _ = counted(NOP * 3 + inc + NOP + HLT,
                     lambda r: r.uc.hook_add(UC_HOOK_MEM_WRITE, on_write, None, PAGE_A, PAGE_A))
    assert (rig.hooks.instructions, rig.rip, seen) == (3, CODE + 3, [1])
    assert rig.ram[PAGE_A] == 1                        # landed, though RIP is still at inc


DATA = 0x200FF8  # a qword that straddles PAGE_A and PAGE_B
COPY_SRC, COPY_DST = 0x202000, 0x203800


def busy_program() -> bytes:
    """A loop of stores, a page-crossing read-modify-write and calls, then a rep movsb."""
    return assemble(
        mov_ecx(5),
        Label("loop"),
        b"\x48\x83\xc0\x03",  # add rax, 3
        store_al(PAGE_A),
        b"\x48\xff\x04\x25" + imm32(DATA + 4),  # inc qword [DATA + 4]: crosses into PAGE_B
        b"\xe8",
        Rel("mix", 4),  # call mix
        b"\xff\xc9",  # dec ecx
        b"\x75",
        Rel("loop", 1),  # jnz loop
        b"\xbe" + imm32(COPY_SRC),  # mov esi, COPY_SRC
        b"\xbf" + imm32(COPY_DST),  # mov edi, COPY_DST
        mov_ecx(9),
        REP_MOVSB,
        HLT,
        NOP,  # RIP after hlt: keeps END_OF_BUSY apart from mix
        Label("mix"),
        b"\x48\x31\xc2",  # xor rdx, rax
        b"\xc3",  # ret
    )


END_OF_BUSY = CODE + busy_program().index(HLT) + 1
STATE_REGS = (UC_X86_REG_RIP, UC_X86_REG_RAX, UC_X86_REG_RCX, UC_X86_REG_RDX, UC_X86_REG_RSI)


def state(rig: Rig) -> tuple[tuple[int, ...], bytes]:
    regs = tuple(rig.uc.reg_read(reg) for reg in STATE_REGS)
    return regs, bytes(rig.ram[PAGE_A : COPY_DST + 0x100])


def test_hand_assembled_programs_decode_as_intended() -> None:
    decoder = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    listing = [f"{i.mnemonic} {i.op_str}".strip() for i in decoder.disasm(busy_program(), CODE)]
    assert listing[:7] == [
        "mov ecx, 5",
        "add rax, 3",
        "mov byte ptr [0x200000], al",
        "inc qword ptr [0x200ffc]",
        f"call {CODE + busy_program().index(bytes.fromhex('4831c2')):#x}",
        "dec ecx",
        f"jne {CODE + 5:#x}",
    ]
    assert listing[-5:] == [
        "rep movsb byte ptr [rdi], byte ptr [rsi]",
        "hlt",
        "nop",
        "xor rdx, rax",
        "ret",
    ]
    listing = [i.mnemonic for i in decoder.disasm(to_user_mode(CODE), CODE)]
    assert listing == ["push"] * 5 + ["iretq"]


def test_rep_string_counts_each_iteration_plus_one() -> None:
    """QEMU runs each iteration as a block of its own, and enters once more with RCX = 0."""
    rig, _ = counted(mov_ecx(9) + REP_MOVSB + HLT)
    assert rig.hooks.instructions == 1 + (9 + 1) + 1


@pytest.mark.parametrize("step", [1, 3, 7, 50])
def test_budget_steps_end_in_the_state_of_one_run(step: int) -> None:
    whole, _ = counted(busy_program())
    assert whole.rip == END_OF_BUSY

    rig = Rig(busy_program())
    runs = 0
    while rig.rip != END_OF_BUSY:
        rig.hooks.set_budget(step)
        rig.run(rig.rip)
        runs += 1
    assert state(rig) == state(whole)
    assert rig.hooks.instructions == whole.hooks.instructions
    assert runs == -(-whole.hooks.instructions // step)  # ceil: the last run ends at hlt


def test_budget_agrees_with_unicorns_own_count_at_every_step() -> None:
    """Step both machines one instruction at a time: ours by budget, the other by count=1."""
    ours = Rig(busy_program())
    oracle = Rig(busy_program())
    oracle.hooks.close()  # no hooks: Unicorn's identity map, count= only
    steps = 0
    while ours.rip != END_OF_BUSY:
        ours.hooks.set_budget(1)
        ours.run(ours.rip)
        oracle.uc.emu_start(oracle.rip, 0, count=1)
        steps += 1
        assert state(ours) == state(oracle), f"step {steps}"
        assert ours.hooks.instructions == steps
    assert oracle.rip == END_OF_BUSY


def test_removing_the_budget_stops_counting() -> None:
    rig = Rig(NOP * 3 + HLT)
    rig.hooks.set_budget(2)
    rig.run()
    rig.hooks.set_budget(None)
    rig.run(rig.rip)
    assert (rig.hooks.instructions, rig.rip) == (2, CODE + 4)


# --- lifetime and build ------------------------------------------------------------------


def test_close_removes_the_hooks_and_keeps_the_counters() -> None:
    rig = Rig(load_al(PAGE_A) + HLT)
    rig.hooks.set_budget(BIG_BUDGET)
    rig.run()
    rig.hooks.close()
    rig.uc.emu_start(CODE, 0)  # Unicorn's own identity map now, no walker
    assert (len(rig.calls), rig.hooks.fills, rig.hooks.instructions) == (2, 2, 2)
    with pytest.raises(RuntimeError, match="after close"):
        rig.hooks.flush()
    rig.hooks.close()  # idempotent


class Owner:
    """The machine's shape: it holds the hooks, and the hooks call its walker."""

    def __init__(self) -> None:
        self.uc, self.ram = bare_machine(HLT)
        self.hooks = NativeHooks(self.uc, self.walk)

    def walk(self, vpage: int, access: int, cpl: int, rflags: int) -> int:
        return vpage | RWX


def test_hooks_are_collected_with_their_owner() -> None:
    owner = Owner()
    owner.hooks.start(CODE)
    gone = weakref.ref(owner.hooks)
    del owner
    gc.collect()
    assert gone() is None


def test_ensure_built_compiles_a_stale_library(tmp_path, monkeypatch) -> None:
    if shutil.which(os.environ.get("CC") or "cc") is None:
        pytest.skip("no C compiler")
    source = tmp_path / "native.c"
    shutil.copy(native._SOURCE, source)
    monkeypatch.setattr(native, "_SOURCE", source)
    monkeypatch.setattr(native, "library_path", lambda: tmp_path / "_native.so")
    built = native.ensure_built()
    assert built == tmp_path / "_native.so" and built.stat().st_size > 0
    assert ctypes.CDLL(str(built)).native_ctx_size() == ctypes.sizeof(native._Ctx)


def test_ensure_built_without_a_compiler_says_so(tmp_path, monkeypatch) -> None:
    source = tmp_path / "native.c"
    source.write_text("")
    monkeypatch.setattr(native, "_SOURCE", source)
    monkeypatch.setattr(native, "library_path", lambda: tmp_path / "_native.so")
    monkeypatch.setenv("CC", "no-such-cc")
    with pytest.raises(RuntimeError, match="no C compiler 'no-such-cc'"):
        native.ensure_built()


# --- the block counter -------------------------------------------------------------------


def test_block_counter_learns_each_block_once_and_charges_it_at_every_entry(counter) -> None:
    rig, _ = counted(busy_program())
    if counter == "block":
        assert rig.hooks.learned == len(rig.learnt) == len(set(rig.learnt)) > 0
        assert rig.hooks.blocks > rig.hooks.learned      # the loop's blocks, entered again
    else:
        assert (rig.hooks.blocks, rig.learnt) == (0, [])


def test_budget_of_n_stops_after_n_at_every_point_of_the_program() -> None:
    """A budget of every size from the start: the stop lands inside blocks (the tail is
    counted instruction by instruction) and at their edges, always in the state Unicorn's
    own count= reaches."""
    oracle = Rig(busy_program())
    oracle.hooks.close()
    states = []
    while oracle.rip != END_OF_BUSY:
        oracle.uc.emu_start(oracle.rip, 0, count=1)
        states.append(state(oracle))
    for n, expected in enumerate(states, start=1):
        rig = Rig(busy_program())
        rig.hooks.set_budget(n)
        rig.run()
        assert (rig.hooks.instructions, rig.hooks.budget) == (n, 0), f"budget {n}"
        assert state(rig) == expected, f"budget {n}"


def smc_program() -> bytes:
    """Calls `target` (at CODE + 0x40) twice, rewriting its first byte in between:
    `nop; nop; ret` (3 instructions) becomes `xchg ax, ax; ret` (66 90 c3: 2), a block of
    the same address and size."""

    def body(pad: int) -> bytes:
        return assemble(
            mov_ecx(2),
            Label("loop"),
            b"\xe8",
            Rel("target", 4),  # call target
            b"\xb0\x66",  # mov al, 0x66
            b"\xa2" + (CODE + 0x40).to_bytes(8, "little"),  # movabs [target], al
            b"\xff\xc9",  # dec ecx
            b"\x75",
            Rel("loop", 1),  # jnz loop
            HLT,
            NOP * pad,
            Label("target"),
            NOP + NOP + b"\xc3",
        )

    return body(0x40 - body(0).index(NOP + NOP + b"\xc3"))


def test_guest_rewriting_a_block_it_ran_is_counted_as_it_now_reads() -> None:
    code = smc_program()
    assert [i.mnemonic for i in DECODER.disasm(code[0x40:], CODE + 0x40)] == ["nop", "nop", "ret"]
    rig, _ = counted(code)
    # mov ecx; (call, 3 | 2, mov al, mov [target], dec, jnz) x 2; hlt
    assert rig.hooks.instructions == 1 + (1 + 3 + 4) + (1 + 2 + 4) + 1
    assert rig.ram[CODE + 0x40] == 0x66


def test_forgotten_blocks_are_learnt_again() -> None:
    """Code rewritten from the host (not seen by QEMU): its translation and its counts are
    dropped together (Cpu.flush_translated_code), and the new bytes are counted."""
    rig, _ = counted(NOP * 3 + HLT)
    assert rig.hooks.instructions == 4
    rig.ram[CODE : CODE + 4] = b"\x66\x90" + NOP + HLT   # xchg ax, ax; nop; hlt
    rig.uc.ctl_flush_tb()
    rig.hooks.forget_blocks()
    rig.hooks.instructions = 0
    rig.run()
    assert rig.hooks.instructions == 3


def test_budget_beyond_64_bits_is_refused() -> None:
    rig = Rig(NOP + HLT)
    with pytest.raises(ValueError, match="beyond 2\\^64"):
        rig.hooks.set_budget(1 << 64)
    rig.hooks.set_budget((1 << 64) - 1)
    rig.run()
    assert rig.hooks.instructions == 2


def far_jump_program() -> bytes:
    """nop; jmp to CODE + 0x10000 (beyond the span a small budget counts one by one);
    there: nop x 6; hlt."""
    far = 0x10000
    jump = b"\xe9" + (far - (1 + 5)).to_bytes(4, "little", signed=True)
    return (NOP + jump).ljust(far, b"\xcc") + NOP * 6 + HLT


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 9])
def test_small_budget_leaving_its_span_still_stops_after_n(n: int) -> None:
    """A step-sized budget counts per instruction near its start; a block elsewhere is
    not entered that way, but counted per block (or per instruction again) from there."""
    oracle = Rig(far_jump_program())
    oracle.hooks.close()
    oracle.uc.emu_start(CODE, 0, count=n)
    rig = Rig(far_jump_program())
    rig.hooks.set_budget(n)
    rig.run()
    assert (rig.hooks.instructions, rig.hooks.budget) == (n, 0)
    assert rig.rip == oracle.rip


def test_store_into_its_own_block_is_counted_once_by_the_block_counter(counter) -> None:
    """mov word [target], 0x9090 rewrites `inc eax` later in its own block into two nops:
    QEMU leaves the block at the store and runs the store again as a block of its own.
    Executed: the store, nop, nop, hlt. The per-instruction counter counts the store twice
    (the limit in emu/hw/native.py's docstring); the block counter takes back what the
    block it left did not run."""
    code = b"\x66\xc7\x05" + (0).to_bytes(4, "little") + b"\x90\x90" + b"\xff\xc0" + HLT
    assert [i.mnemonic for i in DECODER.disasm(code, CODE)] == ["mov", "inc", "hlt"]
    rig, _ = counted(code)
    assert rig.ram[CODE + 9 : CODE + 11] == b"\x90\x90"
    assert rig.uc.reg_read(UC_X86_REG_RAX) == 0            # inc eax never ran
    assert rig.hooks.instructions == (4 if counter == "block" else 5)


def test_a_budget_ending_inside_a_block_runs_the_block_cut_there(counter) -> None:
    """The block counter stops before a block bigger than the budget left, and runs it
    again cut where the budget ends (Unicorn's `until`): the cut block's count comes from
    the whole block's decoding, so nothing is decoded twice, and the stop is exact."""
    rig = Rig(NOP * 40 + HLT)
    rig.hooks.set_budget(30)          # beyond a step-sized budget (counted one by one)
    rig.run()
    assert (rig.hooks.instructions, rig.hooks.budget, rig.rip) == (30, 0, CODE + 30)
    if counter == "block":
        assert rig.learnt == [(CODE, 41)]              # decoded once, at its first entry
        assert rig.hooks.learned == 2                  # and the cut block known from it
    else:
        assert rig.learnt == []
    rig.hooks.set_budget(BIG_BUDGET)
    rig.run(rig.rip)                                   # the rest: nop x 10, hlt
    assert (rig.hooks.instructions, rig.rip) == (41, CODE + 41)


# --- the block counter's fast table ------------------------------------------------------


class ReadOnlyRig(Rig):
    """A rig whose code the guest cannot write (as the machine's code pages): a block's
    next entry is charged from native.c's fast table (native_block's fast path), not
    checked for rewritten bytes."""

    def block(self, pc: int, size: int) -> tuple[list[int], None]:
        return super().block(pc, size)[0], None


ITERATIONS = 1000


def loop_program(iterations: int = ITERATIONS) -> bytes:
    """mov ecx, n; loop: add rax, 3; dec ecx; jnz loop; hlt: 3n + 2 instructions, in the
    blocks [mov .. jnz] (entered once), [add .. jnz] (n - 1 times) and [hlt]."""
    return assemble(
        mov_ecx(iterations),
        Label("loop"),
        b"\x48\x83\xc0\x03",  # add rax, 3
        b"\xff\xc9",  # dec ecx
        b"\x75",
        Rel("loop", 1),  # jnz loop
        HLT,
    )


LOOP = CODE + 5                      # the loop's first instruction (add)
LOOP_DEC = LOOP + 4                  # its dec
LOOP_TOTAL = 3 * ITERATIONS + 2


def unicorns_own(code: bytes, n: int) -> int:
    """RIP after Unicorn's own ``count=n`` from CODE (no hooks): the oracle."""
    oracle = Rig(code)
    oracle.hooks.close()
    oracle.uc.emu_start(CODE, 0, count=n)
    return oracle.rip


def test_blocks_that_cannot_be_rewritten_are_charged_from_the_fast_table(counter) -> None:
    """Every instruction counts once and every block entry is a block charged (the
    statistic NativeHooks.blocks), though only the first entry of each block is learnt."""
    rig = ReadOnlyRig(loop_program())
    rig.hooks.set_budget(BIG_BUDGET)
    rig.run()
    assert (rig.hooks.instructions, rig.rip) == (LOOP_TOTAL, CODE + len(loop_program()))
    assert rig.uc.reg_read(UC_X86_REG_RAX) == 3 * ITERATIONS
    if counter == "block":
        assert (rig.hooks.blocks, rig.hooks.learned) == (1 + (ITERATIONS - 1) + 1, 3)
    else:
        assert rig.hooks.blocks == 0


@pytest.mark.parametrize("n", [17, 18, 19, 20, 1000, 1501, LOOP_TOTAL - 2, LOOP_TOTAL - 1])
def test_budget_ending_among_fast_table_blocks_stops_after_n(n: int) -> None:
    """The fast path charges a block only if the budget holds it whole: the stop is exact,
    at a block boundary or inside one, as Unicorn's own count= stops; the rest runs on."""
    rig = ReadOnlyRig(loop_program())
    rig.hooks.set_budget(n)
    rig.run()
    assert (rig.hooks.instructions, rig.hooks.budget) == (n, 0)
    assert rig.rip == unicorns_own(loop_program(), n)
    rig.hooks.set_budget(BIG_BUDGET)
    rig.run(rig.rip)
    assert (rig.hooks.instructions, rig.uc.reg_read(UC_X86_REG_RAX)) == (LOOP_TOTAL,
                                                                        3 * ITERATIONS)


def test_stop_from_a_hook_inside_a_fast_table_block_takes_back_the_rest() -> None:
    """A run left inside a block charged whole by the fast path (a stop from a read hook,
    RIP at the load) counts only what came before the load, and the load runs again."""
    reads: list[int] = []

    def on_read(uc: Uc, *_: object) -> None:
        reads.append(uc.reg_read(UC_X86_REG_RIP))
        if len(reads) == 50:
            uc.emu_stop()

    code = assemble(
        mov_ecx(100),
        Label("loop"),
        b"\x48\x83\xc0\x03",  # add rax, 3
        load_al(PAGE_A),
        b"\xff\xc9",  # dec ecx
        b"\x75",
        Rel("loop", 1),  # jnz loop
        HLT,
    )
    rig = ReadOnlyRig(code)
    rig.uc.hook_add(UC_HOOK_MEM_READ, on_read, None, PAGE_A, PAGE_A)
    rig.hooks.set_budget(BIG_BUDGET)
    rig.run()
    assert (rig.hooks.instructions, rig.rip) == (1 + 49 * 4 + 1, LOOP + 4)
    assert rig.hooks.budget == BIG_BUDGET - rig.hooks.instructions
    rig.run(rig.rip)
    assert (rig.hooks.instructions, len(reads)) == (1 + 100 * 4 + 1, 101)


def test_stop_soon_from_a_hook_on_the_fast_path_stops_at_the_next_boundary(counter) -> None:
    """stop_soon() ends the budget: the block counter stops before the next block (the
    fast path switched off), the per-instruction counter before the next instruction it
    counts; either way nothing is lost, and a new budget runs on to the end."""
    decs: list[int] = []

    def on_dec(_uc: Uc, *_: object) -> None:
        decs.append(1)
        if len(decs) == 10:
            rig.hooks.stop_soon()

    rig = ReadOnlyRig(loop_program())
    rig.uc.hook_add(UC_HOOK_CODE, on_dec, None, LOOP_DEC, LOOP_DEC)
    rig.hooks.set_budget(BIG_BUDGET)
    rig.run()
    if counter == "block":         # ten iterations whole: at the loop's next entry
        assert (rig.hooks.instructions, rig.rip) == (1 + 10 * 3, LOOP)
    else:                          # before the tenth dec (its hook ran before the count's)
        assert (rig.hooks.instructions, rig.rip) == (1 + 9 * 3 + 1, LOOP_DEC)
    assert rig.hooks.budget == 0
    rig.hooks.set_budget(BIG_BUDGET)
    rig.run(rig.rip)
    again = 1 if counter == "instruction" else 0       # the dec stopped before, hooked again
    assert (rig.hooks.instructions, len(decs)) == (LOOP_TOTAL, ITERATIONS + again)


def test_the_count_and_the_budget_are_set_apart() -> None:
    """Setting the count leaves the budget left as it was, and a new budget leaves the
    count: the two are kept as end - remaining and remaining (native.c), and each setter
    moves the end with it."""
    rig = ReadOnlyRig(loop_program())
    rig.hooks.set_budget(1000)
    rig.run()
    assert (rig.hooks.instructions, rig.hooks.budget) == (1000, 0)
    rig.hooks.instructions = 7
    assert (rig.hooks.instructions, rig.hooks.budget) == (7, 0)
    rig.hooks.set_budget(500)
    assert (rig.hooks.instructions, rig.hooks.budget) == (7, 500)
    rig.run(rig.rip)
    assert (rig.hooks.instructions, rig.hooks.budget) == (507, 0)
    assert rig.rip == unicorns_own(loop_program(), 1500)


def test_counts_and_budgets_near_2_to_the_64_add_up() -> None:
    """A count of 2^63 and more with the largest budget (their sum is beyond 64 bits): the
    count still reads exactly, and so does the budget left."""
    rig = ReadOnlyRig(loop_program())
    rig.hooks.instructions = (1 << 63) + 5
    rig.hooks.set_budget((1 << 64) - 1)
    rig.run()
    assert rig.hooks.instructions == (1 << 63) + 5 + LOOP_TOTAL
    assert rig.hooks.budget == (1 << 64) - 1 - LOOP_TOTAL


# --- a quantum renewed early, at the entry of the block its budget ends in ----------------


def inert_count(code: bytes, bits: int = 64) -> int:
    """The learner's inert count of a block of ``code`` (emu/hw/blocks.py)."""
    from emu.hw.blocks import instruction_offsets

    return instruction_offsets(bits, code)[1]


INERT_BLOCKS = [
    # (name, code, bits, inert first instructions): each from the SDM's encodings.
    ("loop's block: imul, add, add, cmp, jb",
     b"\x48\x0f\xaf\xf1\x48\x01\xd6\x48\x83\xc2\x01\x48\x39\xc2\x72\xf0", 64, 4),
    ("push first", b"\x50\xff\xc3", 64, 0),
    ("pop, call, ret, leave, enter", b"\x58\xe8\x00\x00\x00\x00", 64, 0),
    ("an inc, then a load", b"\xff\xc3\x41\x8b\x00\xff\xc3", 64, 1),
    ("an inc, then a store", b"\xff\xc3\x89\x03\xff\xc3", 64, 1),
    ("lea, a NOP with a memory operand, endbr64, then div",
     b"\x48\x8d\x04\x40\x0f\x1f\x44\x00\x00\xf3\x0f\x1e\xfa\xf7\xf1", 64, 3),
    ("idiv", b"\xf7\xf9", 64, 0),
    ("shifts, double shifts, bit tests, bswap, conversions, carry flag, then rdtsc",
     b"\xd3\xe0\x48\x0f\xa4\xc3\x05\x0f\xa3\xc3\x49\x0f\xc8\x48\x98\x48\x99\xf8\xf9\xf5"
     b"\x0f\x31", 64, 9),
    ("cmove, sete, then a cmovne from memory", b"\x0f\x44\xc3\x0f\x94\xc0\x0f\x45\x03",
     64, 2),
    ("xchg of registers, then xchg with memory", b"\x87\xd8\x87\x18", 64, 1),
    ("mul and imul of registers, then mul of memory",
     b"\x41\xf7\xe0\x6b\xc0\x10\xf7\x23", 64, 2),
    ("movabs, movzx, movsx, movsxd", b"\x48\xb8" + bytes(8) + b"\x0f\xb6\xc3\x0f\xbe\xc3"
     b"\x48\x63\xc3", 64, 4),
    ("mov from a moffs", b"\xa1" + bytes(8), 64, 0),
    ("mov to a segment register", b"\x8e\xd8", 64, 0),
    ("mov from CR0", b"\x0f\x20\xc0", 64, 0),
    ("cpuid", b"\x0f\xa2", 64, 0),
    ("in", b"\xec", 64, 0),
    ("out", b"\xee", 64, 0),
    ("cli", b"\xfa", 64, 0),
    ("hlt", b"\xf4", 64, 0),
    ("int3", b"\xcc", 64, 0),
    ("ud2", b"\x0f\x0b", 64, 0),
    ("syscall", b"\x0f\x05", 64, 0),
    ("rep stosb", b"\xf3\xaa", 64, 0),
    ("xlat", b"\xd7", 64, 0),
    ("pushfq", b"\x9c", 64, 0),
    ("a LOCK prefix on a register form (#UD)", b"\xf0\x01\xd8", 64, 0),
    ("lock add to memory", b"\xf0\x01\x18", 64, 0),
    ("an SSE add", b"\x0f\x58\xc1", 64, 0),
    ("an x87 load", b"\xd9\xe8", 64, 0),
    ("popcnt (#UD by CPUID)", b"\xf3\x0f\xb8\xc3", 64, 0),
    ("pause", b"\xf3\x90", 64, 0),
    ("32-bit: inc eax, add, then push", b"\x40\x01\xd8\x50", 32, 2),
    ("32-bit: bound (a memory operand, #BR)", b"\x62\x03", 32, 0),
    ("32-bit: into (#OF)", b"\xce", 32, 0),
]


@pytest.mark.parametrize(("name", "code", "bits", "inert"), INERT_BLOCKS,
                         ids=[case[0] for case in INERT_BLOCKS])
def test_the_learner_counts_a_blocks_inert_first_instructions(name: str, code: bytes,
                                                               bits: int, inert: int) -> None:
    assert inert_count(code, bits) == inert


class InertRig(ReadOnlyRig):
    """A rig whose learner gives each block's inert count, as the machine's CPU does."""

    def block(self, pc: int, size: int) -> tuple[list[int], None, int]:
        offsets, host = super().block(pc, size)
        at = pc % RAM_SIZE
        return offsets, host, inert_count(bytes(self.ram[at : at + size]))


# KUSER_SHARED_DATA's times, as the renewal writes them (emu.nt.kuser renewal_layout).
INTERRUPT_TIME_AT, TICK_COUNT_AT, BOOT, INCREMENT = 0x8, 0x320, 1 << 56, 7


def inert_loop() -> bytes:
    """mov ecx, n; loop: inc eax; add rbx, 3; xor edx, ecx; dec ecx; jnz loop; hlt: 5n + 2
    instructions, the loop's block of five, four of them inert."""
    return assemble(mov_ecx(ITERATIONS), Label("loop"), b"\xff\xc0", b"\x48\x83\xc3\x03",
                    b"\x31\xca", b"\xff\xc9", b"\x75", Rel("loop", 1), HLT)


INERT_TOTAL = 5 * ITERATIONS + 2


def write_times(times: ctypes.Array, now: int) -> None:
    """KUSER_SHARED_DATA's InterruptTime, SystemTime and TickCount at clock ``now``, as a
    renewal through a stop writes them (emu.nt.kuser: each KSYSTEM_TIME's two highs equal)."""
    def ksystem_time(value: int) -> bytes:
        return struct.pack("<3I", value & 0xFFFF_FFFF, value >> 32, value >> 32)

    base = ctypes.addressof(times)
    ctypes.memmove(base + INTERRUPT_TIME_AT, ksystem_time(now) + ksystem_time(BOOT + now), 24)
    ctypes.memmove(base + TICK_COUNT_AT, ksystem_time(now // INCREMENT), 12)


def renewing(rig: Rig, quantum: int, limit: int | None, *, in_c: bool) -> tuple:
    """Run ``rig`` from CODE with a quantum end every ``quantum`` instructions, up to
    ``limit`` (--max-insns): renewed in C where it can be (``in_c``: NativeHooks
    .arm_renewal), else, the reference, through a stop (the times written, the next budget
    given, the run resumed). The final count, RIP, RAX, RBX, RCX, RDX and the times."""
    times = (ctypes.c_char * 4096)()
    hooks = rig.hooks
    hooks.set_shared_times(ctypes.addressof(times), INTERRUPT_TIME_AT, TICK_COUNT_AT, BOOT,
                           INCREMENT)
    hooks.set_budget(quantum if limit is None else min(quantum, limit))
    pc = CODE
    while True:
        if in_c:
            hooks.arm_renewal(quantum, limit, 0,
                              budget_end=hooks.instructions + hooks.budget)
        hooks.start(pc)
        hooks.disarm()
        pc, done = rig.rip, hooks.instructions
        if hooks.budget or done == limit:
            break                              # the program's hlt, or the limit
        write_times(times, done)
        hooks.set_budget(quantum if limit is None else min(quantum, limit - done))
    regs = [rig.uc.reg_read(r) for r in (UC_X86_REG_RAX, UC_X86_REG_RBX, UC_X86_REG_RCX,
                                         UC_X86_REG_RDX)]
    return hooks.instructions, rig.rip, regs, bytes(times)


@pytest.mark.parametrize("quantum", [100, 101, 102, 103, 104, 997])
def test_a_quantum_ending_among_inert_instructions_is_renewed_at_the_blocks_entry(
        counter, quantum: int) -> None:
    """The loop's quantum ends fall inside its block (after 1 to 4 of its instructions) or
    on its boundary: renewed in C at the entry of the block, or at the boundary, the count,
    the registers and the times are those of the renewals made through stops."""
    got = InertRig(inert_loop())
    reference = InertRig(inert_loop())
    assert renewing(got, quantum, None, in_c=True) == \
        renewing(reference, quantum, None, in_c=False)
    assert got.hooks.instructions == INERT_TOTAL
    if counter == "block":
        assert got.hooks.early_renewals > INERT_TOTAL // quantum // 2
    else:
        assert got.hooks.renewals == 0           # counted per instruction: stops as ever


@pytest.mark.parametrize("limit", [2_000, 2_001, 2_002, 2_003, 2_016, 2_017, 2_018])
def test_an_early_renewal_keeps_the_limit(limit: int) -> None:
    """--max-insns cuts the budget an early renewal gives, and a budget left of a step's
    size (16 or less) is not given in C: the stop is at the limit exactly."""
    got = InertRig(inert_loop())
    reference = InertRig(inert_loop())
    assert renewing(got, 103, limit, in_c=True) == renewing(reference, 103, limit, in_c=False)
    assert got.hooks.instructions == limit


def test_no_early_renewal_among_instructions_that_are_not_inert(counter) -> None:
    """The same loop learnt with no inert instruction (ReadOnlyRig's learner gives no inert
    count): every quantum end inside its block stops, as ever."""
    got = ReadOnlyRig(inert_loop())
    reference = ReadOnlyRig(inert_loop())
    assert renewing(got, 101, None, in_c=True) == renewing(reference, 101, None, in_c=False)
    assert got.hooks.early_renewals == 0


def test_a_watched_range_keeps_the_renewal_at_the_budgets_end(counter) -> None:
    """A Python hook's range (NativeHooks.watch_code) that meets the instructions before the
    budget's end stops the early renewal; one beyond them, or deleted, does not."""
    def early(ranges: list[tuple[int, int]], unwatched: bool = False) -> int:
        rig = InertRig(inert_loop())
        for handle, (begin, end) in enumerate(ranges):
            rig.hooks.watch_code(handle, begin, end)
            if unwatched:
                rig.hooks.unwatch_code(handle)
        # Every quantum end after the 4th instruction of the loop's block (6 + 5n + 4).
        renewing(rig, 100, None, in_c=True)
        return rig.hooks.early_renewals

    # The block at LOOP: inc eax (2 bytes), add rbx, 3 (4), xor edx, ecx (2), dec ecx (2),
    # jnz (2).
    if counter == "instruction":
        assert early([]) == 0
        return
    assert early([]) >= 49
    assert early([(LOOP + 2, LOOP + 2)]) == 0      # on the 2nd
    assert early([(LOOP + 9, LOOP + 9)]) == 0      # on the 4th's last byte
    assert early([(LOOP - 10, LOOP)]) == 0         # ending on the 1st
    assert early([(1, 0)]) == 0                    # every address
    assert early([(LOOP + 10, LOOP + 10)]) >= 49   # on the jnz: after the budget's end
    assert early([(LOOP + 2, LOOP + 2)], unwatched=True) >= 49


class WritableInertRig(Rig):
    """An InertRig whose code the guest may write (Rig's learner gives its host address):
    a block is compared with its bytes at every entry and learnt again when they changed."""

    def block(self, pc: int, size: int) -> tuple[list[int], int, int]:
        offsets, host = super().block(pc, size)
        at = pc % RAM_SIZE
        return offsets, host, inert_count(bytes(self.ram[at : at + size]))


def test_a_rewritten_blocks_inert_count_is_learnt_again(counter) -> None:
    """The loop's `inc eax` rewritten as `push rax; pop rax` (as many bytes): the block is
    learnt again, with no inert instruction, and its quantum ends are no longer renewed
    early; the counts and times are the renewals' through stops either way."""
    def rewritten(rig: Rig) -> None:
        rig.uc.mem_write(LOOP, b"\x50\x58")            # push rax; pop rax
        rig.uc.ctl_remove_cache(CODE, CODE + 0x1000)

    got, reference = WritableInertRig(inert_loop()), WritableInertRig(inert_loop())
    assert renewing(got, 100, None, in_c=True) == renewing(reference, 100, None, in_c=False)
    early = got.hooks.early_renewals
    assert early >= (49 if counter == "block" else 0)
    rewritten(got)
    rewritten(reference)
    assert renewing(got, 100, None, in_c=True) == renewing(reference, 100, None, in_c=False)
    assert got.hooks.instructions == 2 * INERT_TOTAL + ITERATIONS
    assert got.hooks.early_renewals == early
