"""PCIDs in the TLB model (emu/hw/native.c's STLB, emu/hw/cpu.py's control registers).

SDM Vol. 3A 4.10.1 (a translation is cached for the current PCID: CR3[11:0] with
CR4.PCIDE, else 0), 4.10.2.4 (global translations serve every PCID), 4.10.4.1 (what MOV
to CR3/CR4, INVLPG and INVPCID invalidate), Vol. 2B MOV CR (#GP rules, bit 63).

The STLB tests drive a bare Unicorn with a scripted, recording walker (tests/hw/
test_native.py's rig): a walk is a miss, no walk a hit. The control-register tests use
the machine's CPU.
"""

from __future__ import annotations

import pytest
from test_native import (
    BIG_BUDGET,
    CODE,
    DECODER,
    HLT,
    PAGE_A,
    PAGE_B,
    RWX,
    Rig,
    bare_machine,
    load_al,
)
from unicorn.x86_const import UC_X86_REG_CR0, UC_X86_REG_CR3, UC_X86_REG_CR4

from emu.hw.cpu import CR3_NOFLUSH, ControlRegisterFault, Vector
from emu.hw.mmu import CR0, CR4, EFER
from emu.hw.native import Fill, Mode, NativeHooks

OTHER_FRAME = 0x300000


def read_a() -> Rig:
    return Rig(load_al(PAGE_A) + HLT)


def walks_after(rig: Rig, pcid: int) -> int:
    """Run under ``pcid`` with QEMU's TLB empty (as after a CR3 load): walks of PAGE_A."""
    before = len(rig.walks_of(PAGE_A))
    rig.hooks.set_pcid(pcid)
    rig.flush_qemu_tlb()
    rig.run()
    return len(rig.walks_of(PAGE_A)) - before


def test_a_translation_is_cached_for_the_pcid_that_walked_it_only() -> None:
    rig = read_a()
    assert walks_after(rig, 1) == 1
    assert walks_after(rig, 2) == 1          # PCID 2 has nothing of PCID 1's
    assert (walks_after(rig, 1), walks_after(rig, 2)) == (0, 0)     # each keeps its own


def test_each_pcid_sees_its_own_frame_for_the_same_page() -> None:
    rig = read_a()
    rig.hooks.set_pcid(1)
    rig.run()
    rig.rules[PAGE_A] = lambda vpage, *_: OTHER_FRAME | RWX      # PCID 2's tables differ
    rig.hooks.set_pcid(2)
    rig.flush_qemu_tlb()
    rig.run()
    frames = {pcid: value & ~0xFFF for _, vpage, value, pcid in rig.hooks.entries()
              if vpage == PAGE_A}
    assert frames == {1: PAGE_A, 2: OTHER_FRAME}


def test_flushing_a_pcid_keeps_the_others() -> None:
    rig = read_a()
    walks_after(rig, 1)
    walks_after(rig, 2)
    rig.hooks.flush_pcid(1)
    assert (walks_after(rig, 2), walks_after(rig, 1)) == (0, 1)


def test_a_global_translation_serves_every_pcid_and_survives_a_pcid_flush() -> None:
    rig = read_a()
    rig.rules[PAGE_A] = lambda vpage, *_: vpage | RWX | Fill.GLOBAL
    assert walks_after(rig, 1) == 1
    assert walks_after(rig, 2) == 0
    rig.hooks.flush_pcid(2)
    rig.hooks.flush_nonglobal()              # INVPCID type 3 keeps it too
    assert walks_after(rig, 2) == 0
    assert [(vpage, pcid) for _, vpage, _, pcid in rig.hooks.entries() if vpage == PAGE_A] \
        == [(PAGE_A, None)]
    rig.hooks.flush()                        # MOV CR4 / INVPCID type 2: everything
    assert walks_after(rig, 2) == 1


def test_invlpg_drops_the_current_pcid_and_global_but_invpcid_0_only_the_pcid() -> None:
    rig = Rig(load_al(PAGE_A) + load_al(PAGE_B) + HLT)
    rig.rules[PAGE_B] = lambda vpage, *_: vpage | RWX | Fill.GLOBAL
    walks_after(rig, 1)
    walks_after(rig, 2)
    rig.hooks.invalidate(PAGE_B, 2, global_too=False)         # INVPCID type 0, PCID 2
    rig.hooks.invalidate(PAGE_A, 2, global_too=False)
    assert walks_after(rig, 1) == 0 and len(rig.walks_of(PAGE_B)) == 1   # global kept
    assert walks_after(rig, 2) == 1
    rig.hooks.set_pcid(2)
    rig.hooks.invalidate(PAGE_B)                              # INVLPG: global too
    rig.hooks.invalidate(PAGE_A)                              # ... and PCID 2's only
    assert walks_after(rig, 1) == 0 and len(rig.walks_of(PAGE_B)) == 2
    assert walks_after(rig, 2) == 1


def test_invalidating_a_page_in_every_pcid() -> None:
    rig = read_a()
    for pcid in (1, 2, 3):
        walks_after(rig, pcid)
    rig.hooks.invalidate(PAGE_A, every_pcid=True)
    assert [walks_after(rig, pcid) for pcid in (1, 2, 3)] == [1, 1, 1]


@pytest.mark.parametrize("flushes", [510, 511, 512, 513, 1024])
def test_a_pcid_flushed_until_its_generation_comes_round_again_has_nothing_stale(
        flushes: int) -> None:
    """Generations are 9 bits: after 512 flushes the clock wraps, and the table is
    cleared, so an entry of an old generation never matches again."""
    rig = read_a()
    walks_after(rig, 1)
    rig.rules[PAGE_A] = lambda vpage, *_: OTHER_FRAME | RWX   # the tables changed
    for _ in range(flushes):
        rig.hooks.flush_pcid(1)
    assert walks_after(rig, 1) == 1
    assert [value & ~0xFFF for _, vpage, value, pcid in rig.hooks.entries()
            if vpage == PAGE_A] == [OTHER_FRAME]


def test_a_non_canonical_page_is_never_served_from_the_stlb() -> None:
    """The tag keeps a page's bits 12-47; 0x0000800000000000 must not find the entry of
    0xFFFF800000000000 (the walker answers it: #GP)."""
    rig = Rig(b"")
    high = 0xFFFF_8000_0000_0000
    rig.hooks.insert(Mode.KERNEL_AC0, [(high, PAGE_A | RWX), (0x0000_8000_0000_0000,
                                                              PAGE_A | RWX)])
    assert [vpage for _, vpage, _, _ in rig.hooks.entries()] == [high]


def test_qemu_flushes_its_own_tlb_when_cr3_is_written_with_paging_on() -> None:
    """Unicorn 2.1.4, measured: a CR3 write with CR0.PG set flushes QEMU's TLB (its next
    misses reach the fill hook, and the STLB answers them), so a context switch needs no
    separate flush; with PG clear it does not."""
    rig = read_a()
    rig.run()
    rig.uc.reg_write(UC_X86_REG_CR3, 0x5000)
    rig.run()
    assert (rig.hooks.fills, rig.hooks.stlb_hits) == (2, 0)     # PG clear: still cached
    rig.uc.reg_write(UC_X86_REG_CR4, rig.uc.reg_read(UC_X86_REG_CR4) | CR4.PAE)
    rig.uc.reg_write(UC_X86_REG_CR0, rig.uc.reg_read(UC_X86_REG_CR0) | CR0.PG | CR0.PE)
    rig.run()
    fills = rig.hooks.fills
    rig.uc.reg_write(UC_X86_REG_CR3, 0x6000)
    rig.run()
    assert (rig.hooks.fills - fills, len(rig.walks_of(PAGE_A))) == (2, 1)   # STLB hits


@pytest.mark.parametrize("spaces", [2, 4, 6])
def test_blocks_at_one_address_in_many_spaces_count_each_their_own(spaces: int) -> None:
    """Each address space keeps its own table of blocks seen (the last four: a switch
    between a few processes empties none, a fifth takes the least recently used one):
    a loop at the same address, of the same size, counts its own instructions in each."""
    uc, ram = bare_machine(b"")
    # mov ecx, 5; L: <3 bytes>; dec ecx; jnz L; hlt -- the body 3 nops, or mov al + nop.
    loop = [b"\xb9\x05\x00\x00\x00" + body + b"\xff\xc9\x75\xf9" + HLT
            for body in (b"\x90\x90\x90", b"\xb0\x90\x90")]
    counts = [1 + 5 * 5 + 1, 1 + 5 * 4 + 1]
    frames = [0x600000 + 0x1000 * i for i in range(spaces)]
    for i, frame in enumerate(frames):
        ram[frame:frame + len(loop[0])] = loop[i % 2]
    current = [0]

    def walk(vpage: int, *_: int) -> int:
        return (frames[current[0]] if vpage == CODE else vpage) | RWX

    def code(pc: int, size: int) -> tuple[list[int], None]:
        at = frames[current[0]] + pc - CODE        # read-only code: the fast tables hold it
        return [off for off, *_ in DECODER.disasm_lite(bytes(ram[at:at + size]), 0)], None
    hooks = NativeHooks(uc, walk, code)
    hooks.set_budget(BIG_BUDGET)
    for _ in range(3):
        for space in range(spaces):
            current[0] = space
            hooks.load_cr3(0x100000 * (space + 1), space + 1, False)
            hooks.flush_qemu_tlb()
            before = hooks.instructions
            hooks.start(CODE)
            assert hooks.instructions - before == counts[space % 2]


# -- the CPU's control registers ---------------------------------------------------------

@pytest.fixture
def cpu(machine_factory):
    return machine_factory(mem="16M").executive.cpu


def test_cr3_names_the_pcid_and_bit_63_is_never_stored(cpu) -> None:
    base = cpu.cr3
    cpu.set_control(cr3=base | 0x5 | CR3_NOFLUSH)
    assert (cpu.cr3, cpu.pcid, cpu.cr3_value) == (base, 5, base | 5)
    assert cpu.reg("cr3") == base | 5                        # what the guest would read
    assert cpu.native.pcid == 5


def test_a_cr3_load_drops_the_new_pcids_translations_unless_bit_63_is_set(cpu) -> None:
    base = cpu.cr3
    for pcid in (5, 6):
        cpu.native.set_pcid(pcid)
        cpu.native.insert(Mode.USER, [(PAGE_A, PAGE_A | RWX)])
    cpu.set_control(cr3=base | 5 | CR3_NOFLUSH)
    assert sorted(e[3] for e in cpu.native.entries() if e[1] == PAGE_A) == [5, 6]
    cpu.set_control(cr3=base | 6)
    assert sorted(e[3] for e in cpu.native.entries() if e[1] == PAGE_A) == [5]


def test_without_pcide_a_cr3_load_flushes_pcid_0_and_bit_63_is_a_reserved_bit(cpu) -> None:
    base = cpu.cr3
    cpu.set_control(cr4=cpu.cr4 & ~CR4.PCIDE)
    assert cpu.pcid == 0
    cpu.native.insert(Mode.USER, [(PAGE_A, PAGE_A | RWX)])
    cpu.set_control(cr3=base | 0x18)                         # PWT, PCD: not a PCID
    assert cpu.pcid == 0 and cpu.cr3_value == base | 0x18
    assert not cpu.native.entries()
    with pytest.raises(ControlRegisterFault) as fault:
        cpu.set_control(cr3=base | CR3_NOFLUSH)
    assert fault.value.vector == Vector.GP and cpu.cr3_value == base | 0x18
    for bad in (base | CR3_NOFLUSH, base | 1 << 40, base | 1 << 62):   # bits 40-62: reserved
        with pytest.raises(ControlRegisterFault, match="reserved bit"):
            cpu.load_cr3(bad)
    assert cpu.cr3_value == base | 0x18


def test_clearing_pcide_flushes_every_pcid(cpu) -> None:
    for pcid in (0, 7):
        cpu.native.set_pcid(pcid)
        cpu.native.insert(Mode.USER, [(PAGE_A, PAGE_A | RWX)])
    cpu.native.set_pcid(cpu.pcid)
    cpu.set_control(cr4=cpu.cr4 & ~CR4.PCIDE)
    assert not cpu.native.entries() and cpu.pcid == 0


def test_setting_pcide_with_a_nonzero_cr3_low_part_or_outside_long_mode_is_gp(cpu) -> None:
    cr4 = cpu.cr4
    cpu.set_control(cr4=cr4 & ~CR4.PCIDE)
    cpu.set_control(cr3=cpu.cr3 | 0x8)                       # PWT
    with pytest.raises(ControlRegisterFault, match=r"CR3\[11:0\] = 0x8"):
        cpu.set_control(cr4=cr4)
    assert not cpu.cr4 & CR4.PCIDE
    cpu.set_control(cr3=cpu.cr3)
    efer = cpu.efer
    with pytest.raises(ControlRegisterFault, match="LMA = 0"):
        cpu.set_control(efer=efer & ~EFER.LMA, cr4=cr4)
    assert (cpu.efer, cpu.cr4 & CR4.PCIDE) == (efer, 0)      # nothing loaded
    cpu.set_control(cr4=cr4)
    assert cpu.pcid_enabled


def test_invpcid_types(cpu) -> None:
    def cached() -> list[tuple[int, int | None]]:
        return sorted(((vpage, pcid) for _, vpage, _, pcid in cpu.native.entries()),
                      key=lambda e: (e[0], -1 if e[1] is None else e[1]))

    def fill() -> None:
        for pcid in (3, 4):
            cpu.native.set_pcid(pcid)
            cpu.native.insert(Mode.USER, [(PAGE_A, PAGE_A | RWX), (PAGE_B, PAGE_B | RWX)])
        cpu.native.insert(Mode.USER, [(CODE, CODE | RWX | Fill.GLOBAL)])
        cpu.native.set_pcid(cpu.pcid)
    cpu.native.flush()
    fill()
    cpu.invpcid(0, 3, PAGE_A)
    assert cached() == [(PAGE_A, 4), (PAGE_B, 3), (PAGE_B, 4), (CODE, None)]
    cpu.invpcid(1, 4)
    assert cached() == [(PAGE_B, 3), (CODE, None)]
    fill()
    cpu.invpcid(3)
    assert cached() == [(CODE, None)]
    fill()
    cpu.invpcid(2)
    assert cached() == []
    for bad in ((4,), (0, 0x1000, PAGE_A), (0, 1, 0x0000_8000_0000_0000)):
        with pytest.raises(ControlRegisterFault):
            cpu.invpcid(*bad)
