"""Baselines for the benchmarks: the same guest images on Unicorn without our machine.

``run_flat``: plain Unicorn as people use it, no paging at all (virtual = physical
via ``mem_map``), the image's pages mapped at their link addresses.
``run_qemu_walker``: QEMU's own C page walker (Unicorn's default UC_TLB_CPU mode)
over the very page tables our executive built, entered at ring 3 by the same
``iretq``: the fairest reference for the cost of our Python walker.
"""

from __future__ import annotations

import ctypes
import struct
import time
from pathlib import Path

from unicorn import (
    UC_ARCH_X86,
    UC_ERR_OK,
    UC_HOOK_BLOCK,
    UC_HOOK_INSN,
    UC_MODE_64,
    UC_PROT_ALL,
    Uc,
    UcError,
)
from unicorn import x86_const as ux
from unicorn.unicorn_py3 import unicorn as _binding

from emu import Machine
from emu.hw import native
from emu.hw.cpu import MSR_EFER
from emu.hw.descriptors import GDT_LIMIT, Selector
from emu.nt import layout
from emu.nt.kernel import CR0_BOOT, CR4_BOOT, EFER_BOOT, KERNEL_STACK_TOP, TRAMPOLINE, USER_RFLAGS
from emu.nt.loader import load_file
from emu.nt.process import initial_stack
from emu.nt.syscalls import Service

STACK_TOP = 0x7FFF_0000_0000
STACK_SIZE = 1 << 20


def _syscall_hook(uc: Uc, _data) -> None:
    """Just enough of the ABI: terminate stops, write succeeds silently, pid is 4."""
    number = uc.reg_read(ux.UC_X86_REG_RAX)
    if number == Service.NtTerminateProcess:
        uc.emu_stop()
    uc.reg_write(ux.UC_X86_REG_RAX, 4 if number == Service.NtGetCurrentProcessId else 0)


def run_flat(path: Path, args: list[str], *, tally: bool = False) -> float:
    """Seconds of ``emu_start`` for the image on plain Unicorn without paging; with
    ``tally``, a C UC_HOOK_BLOCK hook that only counts block entries (native.c
    ``native_tally``): the floor any block counter pays."""
    image = load_file(path)
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.reg_write(ux.UC_X86_REG_CR4, uc.reg_read(ux.UC_X86_REG_CR4) | 0x600)   # SSE on
    for va, contents in sorted(image.pages.items()):
        uc.mem_map(va, 0x1000, UC_PROT_ALL)
        uc.mem_write(va, bytes(contents))
    uc.mem_map(STACK_TOP - STACK_SIZE, STACK_SIZE, UC_PROT_ALL)
    argv = [str(path).encode(), *(a.encode() for a in args)]
    rsp, stack = initial_stack(STACK_TOP, argv, image.entry)
    uc.mem_write(rsp, stack)
    uc.reg_write(ux.UC_X86_REG_RSP, rsp)
    uc.hook_add(UC_HOOK_INSN, _syscall_hook, None, 1, 0, ux.UC_X86_INS_SYSCALL)
    entries = ctypes.c_uint64(0)
    if tally:
        _tally_hook(uc, entries)
    t = time.perf_counter()
    uc.emu_start(image.entry, 0)
    elapsed = time.perf_counter() - t
    if tally and entries.value == 0:
        raise SystemExit("bench: the block-hook floor counted no block")
    return elapsed


def _tally_hook(uc: Uc, entries: ctypes.c_uint64) -> None:
    """Add native.c's ``native_tally`` as ``uc``'s UC_HOOK_BLOCK hook, counting into
    ``entries`` (raw ctypes: the binding's hook_add would put a Python callback there)."""
    handle = _binding.uc_hook_h()
    status = _binding.uclib.uc_hook_add(
        uc._uch, ctypes.byref(handle), UC_HOOK_BLOCK,
        ctypes.cast(native._library().native_tally, ctypes.c_void_p),
        ctypes.byref(entries), ctypes.c_uint64(1), ctypes.c_uint64(0))
    if status != UC_ERR_OK:
        raise SystemExit(f"bench: cannot add the block-hook floor: {UcError(status)}")


def run_qemu_walker(path: Path, args: list[str], mem: str) -> float:
    """Seconds of ``emu_start`` for the image on QEMU's walker over our machine's tables."""
    m = Machine(mem)
    try:
        proc = m.spawn(path, args)
        ex = m.executive
        uc = Uc(UC_ARCH_X86, UC_MODE_64)
        uc.ctl_set_cpu_model(ux.UC_CPU_X86_BROADWELL)
        uc.mem_map_ptr(0, m.mem.size, UC_PROT_ALL, m.mem.address)
        uc.reg_write(ux.UC_X86_REG_MSR, (MSR_EFER, int(EFER_BOOT)))
        uc.reg_write(ux.UC_X86_REG_CR4, int(CR4_BOOT))
        uc.reg_write(ux.UC_X86_REG_CR3, proc.space.cr3)
        uc.reg_write(ux.UC_X86_REG_CR0, int(CR0_BOOT))
        uc.reg_write(ux.UC_X86_REG_GDTR, (0, layout.KERNEL_GDT, GDT_LIMIT, 0))
        frame = struct.pack("<5Q", proc.image.entry, Selector.USER_CODE, USER_RFLAGS,
                            proc.entry_rsp, Selector.USER_DATA)
        frame_va = KERNEL_STACK_TOP - len(frame)
        pa = ex.mm.system.lookup(frame_va).pfn * layout.PAGE_SIZE + (frame_va & 0xFFF)
        m.mem.write(pa, frame)
        uc.reg_write(ux.UC_X86_REG_RSP, frame_va)
        uc.hook_add(UC_HOOK_INSN, _syscall_hook, None, 1, 0, ux.UC_X86_INS_SYSCALL)
        t = time.perf_counter()
        uc.emu_start(TRAMPOLINE, 0)
        elapsed = time.perf_counter() - t
        if uc.reg_read(ux.UC_X86_REG_CS) & 3 != 3:
            raise SystemExit("bench: the QEMU-walker baseline did not reach ring 3")
        return elapsed
    finally:
        m.close()
