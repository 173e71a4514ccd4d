"""What Unicorn 2.1.4 does when a hook writes RIP at a block's entry (measured: the facts the
preempted switch made in C rests on, emu/hw/native.c ``ring_switch``).

* A RIP written through ``uc_reg_write`` from a UC_HOOK_BLOCK hook makes Unicorn leave the
  translated block it was about to run, without running any of it, and go on at the new
  RIP without ending the run (uc.c: the write sets quit_request and breaks the translation
  loop; the CPU loop resumes instead of stopping).
* A context restored there (``uc_context_restore``) is not enough: the block translated for
  the old RIP runs anyway, once, unless RIP is also written.
"""

from __future__ import annotations

from unicorn import UC_ARCH_X86, UC_HOOK_BLOCK, UC_MODE_64, UC_PROT_ALL, Uc
from unicorn.x86_const import UC_X86_REG_RAX, UC_X86_REG_RBX, UC_X86_REG_RIP

A, B = 0x1000, 0x2000
A_CODE = b"\x48\xff\xc0\x48\xff\xc0\xeb\xf8"        # A: inc rax; inc rax; jmp A
B_CODE = b"\x48\xff\xc3\xeb\xfb"                    # B: inc rbx; jmp B


def machine() -> Uc:
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, 0x10000, UC_PROT_ALL)
    uc.mem_write(A, A_CODE)
    uc.mem_write(B, B_CODE)
    return uc


def run(uc: Uc, at_fifth) -> list[int]:
    """Run from A; ``at_fifth(uc)`` inside the block hook at the fifth block entry; the run
    stops (uc_emu_stop) at the twelfth. The addresses of the blocks entered."""
    entered: list[int] = []

    def hook(uc: Uc, address: int, _size: int, _data) -> None:
        entered.append(address)
        if len(entered) == 5:
            at_fifth(uc)
        elif len(entered) == 12:
            uc.emu_stop()

    uc.hook_add(UC_HOOK_BLOCK, hook)
    uc.emu_start(A, 0)
    return entered


def test_a_rip_written_in_a_block_hook_leaves_the_block_and_the_run_goes_on() -> None:
    uc = machine()
    entered = run(uc, lambda uc: uc.reg_write(UC_X86_REG_RIP, B))
    # Four blocks of A ran (two increments each), the fifth did not: the run went on at B
    # (seven entries, the last stopped before it ran) in the same emu_start.
    assert entered == [A] * 5 + [B] * 7
    assert uc.reg_read(UC_X86_REG_RAX) == 8 and uc.reg_read(UC_X86_REG_RBX) == 6
    assert uc.reg_read(UC_X86_REG_RIP) == B


def test_a_context_restored_in_a_block_hook_needs_the_rip_written_too() -> None:
    uc = machine()
    uc.reg_write(UC_X86_REG_RIP, B)
    uc.reg_write(UC_X86_REG_RBX, 100)
    other = uc.context_save()                 # another thread: at B, RBX 100, RAX 0
    uc.reg_write(UC_X86_REG_RBX, 0)

    def switch(uc: Uc) -> None:
        uc.context_restore(other)
        uc.reg_write(UC_X86_REG_RIP, B)

    assert run(uc, switch) == [A] * 5 + [B] * 7
    assert uc.reg_read(UC_X86_REG_RAX) == 0 and uc.reg_read(UC_X86_REG_RBX) == 106

    uc = machine()
    uc.reg_write(UC_X86_REG_RIP, B)
    other = uc.context_save()
    # Restored alone: the block translated for A runs (its increments land in the loaded
    # registers) and the run goes on in A.
    assert run(uc, lambda uc: uc.context_restore(other)) == [A] * 12
    assert uc.reg_read(UC_X86_REG_RAX) == 14 and uc.reg_read(UC_X86_REG_RBX) == 0
