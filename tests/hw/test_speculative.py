"""Speculative fills: what the STLB may cache ahead of use must equal what a walk would give."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from fuzzscale import examples
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))
from mmu_helpers import NX, RW, US, A, D, FakeMemory, P, Tables  # noqa: E402

from emu.hw import mmu  # noqa: E402

CR0 = int(mmu.CR0.PG | mmu.CR0.PE | mmu.CR0.WP)
CR4 = int(mmu.CR4.PAE | mmu.CR4.SMEP)
EFER = int(mmu.EFER.LME | mmu.EFER.LMA | mmu.EFER.NXE)
BASE = 0x0000_0040_0000_0000
FRAMES = 0x80000


def build(leaves: list[int]) -> tuple[FakeMemory, Tables]:
    mem = FakeMemory(1 << 20)
    tables = Tables(mem)
    for i, leaf in enumerate(leaves):
        if leaf:
            tables.map(BASE + i * 4096, FRAMES + i * 4096, leaf)
    return mem, tables


def fills_after_walk(mem, tables, cpl, rflags=0):
    seen: list = []
    mmu.fill(mem, BASE, "read", tables.cr3, cpl, CR0, CR4, EFER, rflags, seen=seen)
    writes = mem.writes
    fills = mmu.speculative_fills(mem, seen, BASE, cpl=cpl, cr0=CR0, cr4=CR4, efer=EFER,
                                  rflags=rflags)
    assert mem.writes == writes                  # speculation never sets an Accessed bit
    return dict(fills)


def test_only_entries_already_accessed_are_cached_and_nothing_is_written():
    mem, tables = build([P | US | A, P | US | A, P | US, P | US | RW | A | D, P | US | RW | A])
    got = fills_after_walk(mem, tables, cpl=3)
    page = lambda i: BASE + i * 4096  # noqa: E731
    assert page(2) not in got                                  # A = 0: not cached
    assert got[page(1)] == FRAMES + 4096 | mmu.Prot.READ | mmu.Prot.EXEC
    assert got[page(3)] & mmu.Prot.WRITE                       # writable and dirty
    assert not got[page(4)] & mmu.Prot.WRITE                   # writable, D = 0: no WRITE yet


def test_large_pages_give_no_speculative_fills():
    mem = FakeMemory(1 << 22)
    tables = Tables(mem)
    tables.map(BASE, 0x200000, P | US | A, size=1 << 21)
    seen: list = []
    mmu.fill(mem, BASE, "read", tables.cr3, 3, CR0, CR4, EFER, seen=seen)
    assert mmu.speculative_fills(mem, seen, BASE, cpl=3, cr0=CR0, cr4=CR4, efer=EFER) == []


LEAF_BITS = st.sampled_from([0, P, P | A, P | A | D, P | RW | A, P | RW | A | D, P | US | A,
                             P | US | RW | A, P | US | RW | A | D, P | US | A | NX,
                             P | US | RW | A | D | NX, P | A | (1 << 45)])


@pytest.mark.fuzz
@settings(max_examples=examples(60), deadline=None)
@given(leaves=st.lists(LEAF_BITS, min_size=2, max_size=24), cpl=st.sampled_from([0, 3]),
       ac=st.booleans())
def test_each_speculative_fill_equals_a_real_walk(leaves, cpl, ac):
    leaves[0] = P | US | RW | A | D                      # the page actually walked
    mem, tables = build(leaves)
    rflags = mmu.RFLAGS_AC if ac else 0
    got = fills_after_walk(mem, tables, cpl, rflags)
    for i, leaf in enumerate(leaves[1:], start=1):
        va = BASE + i * 4096
        try:
            pa, prot = mmu.fill(mem, va, "read", tables.cr3, cpl, CR0, CR4, EFER, rflags)
        except mmu.PageFault:
            pa, prot = None, 0
        if not leaf & A or leaf & (1 << 45) or not prot:
            assert va not in got
        else:
            # The same frame and rights a read fill grants (A/D were already set).
            assert got[va] == pa | prot, (hex(va), hex(leaf))


def test_a_sweep_through_the_machine_is_served_by_prefetch_and_stays_exact(machine_factory,
                                                                          apps):
    m = machine_factory(mem="256M")
    proc = m.spawn(apps / "sweep", ["4096", "3"])
    result = m.run()
    # byte after round r = 1 + 2 + ... + (r + 1); checksum = checksum * 31 + 4096 * byte
    checksum = 0
    for r in range(3):
        checksum = checksum * 31 + 4096 * ((r + 1) * (r + 2) // 2)
    assert proc.output == f"sweep checksum {checksum}\n".encode()
    assert result.stats.stlb_hits > 0.9 * result.stats.tlb_fills
