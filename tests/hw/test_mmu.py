"""Unit tests for emu.hw.mmu on hand-built page tables (SDM Vol. 3A §4.5-§4.8)."""

from __future__ import annotations

import itertools
import random

import pytest
from fuzzscale import examples
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from mmu_helpers import GIB1, KIB4, MIB2, NX, PS, RW, UPPER, US, A, D, FakeMemory, P, Tables

from emu.hw import mmu
from emu.hw.mmu import (
    CR0,
    CR4,
    EFER,
    RFLAGS_AC,
    Access,
    GeneralProtection,
    PageFault,
    PFErr,
    Prot,
    Translation,
    WalkStep,
    fill,
    is_canonical,
    translate,
    walk,
)

VA = 0x0000_1234_5678_9ABC  # PML4 36, PDPT 209, PD 179, PT 393, offset 0xABC
HIGH_VA = 0xFFFF_8000_0020_1ABC  # upper half: PML4 256
FRAME = 0x0005_6000
LONG_MODE = EFER.LME | EFER.LMA


def mode(cpl=3, wp=True, nxe=True, smep=False, smap=False, ac=False) -> dict:
    """Keyword arguments for walk/translate describing one CPU mode."""
    return dict(
        cpl=cpl,
        cr0=CR0.PE | CR0.PG | (CR0.WP if wp else 0),
        cr4=CR4.PAE | (CR4.SMEP if smep else 0) | (CR4.SMAP if smap else 0),
        efer=LONG_MODE | (EFER.NXE if nxe else 0),
        rflags=0x2 | (RFLAGS_AC if ac else 0),
    )


def setup(va=VA, frame=FRAME, leaf=P | RW | US, size=KIB4, upper=UPPER):
    """A fresh memory with one mapping; returns (mem, tables, {level: entry address})."""
    mem = FakeMemory()
    tables = Tables(mem)
    where = tables.map(va, frame, leaf, size=size, upper=upper)
    return mem, tables, where


def do_walk(mem, tables, access="read", va=VA, set_ad=False, **m) -> Translation:
    return walk(mem, va, access, cr3=tables.cr3, set_accessed_dirty=set_ad, **mode(**m))


def fault(mem, tables, access="read", va=VA, set_ad=False, **m) -> PageFault:
    with pytest.raises(PageFault) as info:
        do_walk(mem, tables, access, va, set_ad, **m)
    assert info.value.address == va
    return info.value


# --- canonical addresses -------------------------------------------------------------


@pytest.mark.parametrize(
    "va, ok",
    [
        (0, True),
        (0x0000_7FFF_FFFF_FFFF, True),
        (0xFFFF_8000_0000_0000, True),
        (0xFFFF_FFFF_FFFF_FFFF, True),
        (0x0000_8000_0000_0000, False),
        (0xFFFF_7FFF_FFFF_FFFF, False),
        (0x8000_0000_0000_0000, False),
        (0x0001_0000_0000_0000, False),
    ],
)
def test_is_canonical(va, ok):
    assert is_canonical(va) is ok


class CountingMemory(FakeMemory):
    reads = 0

    def read(self, pa, n):
        self.reads += 1
        return super().read(pa, n)


@pytest.mark.parametrize("va", [0x0000_8000_0000_0000, 0xFFFF_7FFF_FFFF_FFFF])
@pytest.mark.parametrize("access", ["read", "write", "fetch"])
def test_non_canonical_is_gp_before_any_walk(va, access):
    mem = CountingMemory()
    with pytest.raises(GeneralProtection) as info:
        walk(mem, va, access, cr3=0x1000, **mode())
    assert info.value.address == va and info.value.error_code == 0
    assert mem.reads == 0 and mem.writes == 0
    with pytest.raises(GeneralProtection):
        translate(mem, va, access, cr3=0x1000, **mode())
    with pytest.raises(GeneralProtection):
        fill(mem, va, access, 0x1000, 3, CR0.PG, CR4.PAE, LONG_MODE)


# --- translation ----------------------------------------------------------------------


@pytest.mark.parametrize("va", [VA, HIGH_VA, 0, 0x0000_7FFF_FFFF_F000])
def test_4k_translation(va):
    mem, tables, where = setup(va=va)
    t = do_walk(mem, tables, va=va)
    assert t.pa == FRAME + (va & 0xFFF)
    assert t.page_size == KIB4 and t.va == va
    assert translate(mem, va, "read", cr3=tables.cr3, **mode()) == t.pa
    assert [s.entry_address for s in t.steps] == [where[4], where[3], where[2], where[1]]


def test_access_names_accept_enum_and_str():
    mem, tables, _ = setup()
    for access in (Access.READ, Access.WRITE, Access.FETCH, "read", "write", "fetch"):
        assert do_walk(mem, tables, access).pa == FRAME + 0xABC


def test_cr3_low_bits_are_ignored():
    mem, tables, _ = setup()
    m = mode()
    assert walk(mem, VA, "read", cr3=tables.cr3 | 0xFFF, **m).pa == FRAME + 0xABC


def test_2mib_page():
    mem, tables, where = setup(frame=0x0060_0000, size=MIB2)
    t = do_walk(mem, tables)
    assert t.page_size == MIB2
    assert t.pa == 0x0060_0000 + (VA & (MIB2 - 1))
    assert [s.name for s in t.steps] == ["PML4E", "PDPTE", "PDE"]


def test_1gib_page():
    mem, tables, where = setup(frame=0x0030_0000_0000, size=GIB1)
    t = do_walk(mem, tables)
    assert t.page_size == GIB1
    assert t.pa == 0x0030_0000_0000 + (VA & (GIB1 - 1))
    assert [s.name for s in t.steps] == ["PML4E", "PDPTE"]


@pytest.mark.parametrize("size", [MIB2, GIB1])
def test_large_page_pat_bit_12_is_not_an_address_bit(size):
    mem, tables, where = setup(frame=GIB1 | (1 << 12), size=size)
    assert do_walk(mem, tables).pa == GIB1 + (VA & (size - 1))


def test_pte_pat_bit_7_is_not_page_size():
    mem, tables, _ = setup(leaf=P | RW | US | PS)
    t = do_walk(mem, tables)
    assert t.page_size == KIB4 and t.pa == FRAME + 0xABC


@pytest.mark.parametrize("bit", [52, 55, 58, 62])
@pytest.mark.parametrize("level", [4, 3, 2, 1])
def test_bits_52_to_62_are_ignored(level, bit):
    mem, tables, where = setup()
    mem.set_q(where[level], mem.q(where[level]) | 1 << bit)
    assert do_walk(mem, tables).pa == FRAME + 0xABC


def test_frame_bit_39_is_an_address_bit():
    mem, tables, _ = setup(frame=(1 << 39) | FRAME)
    assert do_walk(mem, tables).pa == (1 << 39) + FRAME + 0xABC


# --- not present ----------------------------------------------------------------------


@pytest.mark.parametrize("level", [4, 3, 2, 1])
@pytest.mark.parametrize(
    "access, m, code",
    [
        ("read", dict(cpl=0), 0),
        ("read", dict(cpl=3), PFErr.U),
        ("write", dict(cpl=0), PFErr.W),
        ("write", dict(cpl=3), PFErr.W | PFErr.U),
        ("fetch", dict(cpl=0, nxe=True), PFErr.ID),
        ("fetch", dict(cpl=3, nxe=True), PFErr.ID | PFErr.U),
        ("fetch", dict(cpl=0, nxe=False), 0),
        ("fetch", dict(cpl=3, nxe=False), PFErr.U),
        ("fetch", dict(cpl=0, nxe=False, smep=True), PFErr.ID),
    ],
)
def test_not_present_at_each_level(level, access, m, code):
    mem, tables, where = setup()
    mem.set_q(where[level], mem.q(where[level]) & ~P)
    pf = fault(mem, tables, access, **m)
    assert pf.error_code == code
    assert pf.level == level
    assert len(pf.steps) == 5 - level
    assert pf.steps[-1].entry_address == where[level]
    assert pf.reason == f"not present: P=0 in {mmu.LEVEL_NAMES[level]}"


def test_not_present_entry_with_garbage_is_still_not_present():
    mem, tables, where = setup()
    mem.set_q(where[2], 0xFFFF_FFFF_FFFF_FFFE)  # every bit but P, reserved ones too
    assert fault(mem, tables).error_code == PFErr.U


# --- reserved bits --------------------------------------------------------------------

RSVD = PFErr.P | PFErr.RSVD


@pytest.mark.parametrize("bit", [40, 45, 51])
@pytest.mark.parametrize("level", [4, 3, 2, 1])
def test_reserved_physical_address_bits(level, bit):
    mem, tables, where = setup()
    mem.set_q(where[level], mem.q(where[level]) | 1 << bit)
    pf = fault(mem, tables)
    assert pf.error_code == RSVD | PFErr.U
    assert pf.level == level
    assert pf.reason == f"reserved bit {bit} set in {mmu.LEVEL_NAMES[level]}"


@pytest.mark.parametrize("size", [KIB4, MIB2, GIB1])
@pytest.mark.parametrize("bit", [40, 51])
def test_reserved_address_bits_in_large_leaves(size, bit):
    mem, tables, _ = setup(frame=(1 << bit) | GIB1, size=size)
    assert fault(mem, tables, "write", cpl=0).error_code == RSVD | PFErr.W


@pytest.mark.parametrize("level", [4, 3, 2, 1])
def test_nx_is_reserved_without_nxe(level):
    mem, tables, where = setup()
    mem.set_q(where[level], mem.q(where[level]) | NX)
    pf = fault(mem, tables, "read", nxe=False)
    assert pf.error_code == RSVD | PFErr.U
    assert pf.reason == f"reserved bit 63 set in {mmu.LEVEL_NAMES[level]}"
    # with NXE=1 the same tables translate (for data)
    assert do_walk(mem, tables, "read", nxe=True).pa == FRAME + 0xABC


def test_ps_in_pml4e_is_reserved():
    mem, tables, where = setup()
    mem.set_q(where[4], mem.q(where[4]) | PS)
    pf = fault(mem, tables, "fetch", cpl=0, nxe=True)
    assert pf.error_code == RSVD | PFErr.ID
    assert pf.reason == "reserved bit 7 set in PML4E" and pf.level == 4


@pytest.mark.parametrize("bit", [13, 20, 29])
def test_1gib_leaf_reserved_bits_13_to_29(bit):
    mem, tables, _ = setup(frame=GIB1 | 1 << bit, size=GIB1)
    pf = fault(mem, tables, "write", cpl=3)
    assert pf.error_code == RSVD | PFErr.W | PFErr.U
    assert pf.reason == f"reserved bit {bit} set in PDPTE" and pf.level == 3


@pytest.mark.parametrize("bit", [13, 17, 20])
def test_2mib_leaf_reserved_bits_13_to_20(bit):
    mem, tables, _ = setup(frame=MIB2 | 1 << bit, size=MIB2)
    pf = fault(mem, tables, "read", cpl=0)
    assert pf.error_code == RSVD
    assert pf.reason == f"reserved bit {bit} set in PDE" and pf.level == 2


@pytest.mark.parametrize("bit", [13, 20, 29])
@pytest.mark.parametrize("level", [3, 2])
def test_low_frame_bits_of_non_leaf_pdpte_and_pde_are_address_bits(level, bit):
    """Bits 13..29 are reserved only in a leaf: in a PDPTE/PDE that points to a table they
    are part of that table's address, so the walk goes on to read the next table there."""
    mem, tables, where = setup()
    mem.set_q(where[level], mem.q(where[level]) ^ 1 << bit)
    try:
        steps = do_walk(mem, tables).steps
    except PageFault as pf:
        assert pf.level < level  # whatever happens below, this entry was fine
        steps = pf.steps
    assert steps[5 - level].entry_address & ~0xFFF == mem.q(where[level]) & ~0xFFF


def test_reserved_bit_beats_not_present_lower_down_and_permissions():
    mem, tables, where = setup(leaf=0)  # PTE not present
    mem.set_q(where[3], mem.q(where[3]) & ~US | 1 << 51)  # PDPTE: reserved and supervisor
    assert fault(mem, tables).error_code == RSVD | PFErr.U


def test_not_present_beats_a_protection_fault_above():
    mem, tables, where = setup(leaf=P | RW | US)
    mem.set_q(where[4], mem.q(where[4]) & ~US)  # PML4E supervisor-only
    mem.set_q(where[1], 0)  # PTE not present
    assert fault(mem, tables, "write").error_code == PFErr.W | PFErr.U


# --- access rights (§4.6): hand-picked cases with exact error codes --------------------

PRW = PFErr.P | PFErr.W


@pytest.mark.parametrize(
    "leaf, access, m, code",
    [
        # user mode
        (P | RW | US, "read", dict(cpl=3), None),
        (P | US, "read", dict(cpl=3), None),
        (P | US, "write", dict(cpl=3), PRW | PFErr.U),  # read-only: 7
        (P | US, "write", dict(cpl=3, wp=False), PRW | PFErr.U),  # WP does not matter at CPL 3
        (P | RW, "read", dict(cpl=3), PFErr.P | PFErr.U),  # supervisor page: 5
        (P | RW, "write", dict(cpl=3), PRW | PFErr.U),
        (P | RW, "fetch", dict(cpl=3), PFErr.P | PFErr.U | PFErr.ID),
        (P | RW, "fetch", dict(cpl=3, nxe=False), PFErr.P | PFErr.U),
        (P | US | NX, "fetch", dict(cpl=3), PFErr.P | PFErr.ID | PFErr.U),
        (P | US | NX, "read", dict(cpl=3), None),
        (P | US, "fetch", dict(cpl=3), None),  # R/W does not matter to fetches
        # supervisor mode, CR0.WP
        (P, "write", dict(cpl=0, wp=True), PRW),  # 3
        (P, "write", dict(cpl=0, wp=False), None),
        (P | US, "write", dict(cpl=0, wp=False), None),  # WP=0: even user read-only pages
        (P | US, "write", dict(cpl=0, wp=True), PRW),
        (P, "read", dict(cpl=0), None),
        (P | US, "read", dict(cpl=0), None),
        # NX
        (P | RW | NX, "fetch", dict(cpl=0), PFErr.P | PFErr.ID),  # 0x11
        (P | RW | NX, "read", dict(cpl=0), None),
        (P | RW, "fetch", dict(cpl=0), None),
        # SMEP
        (P | RW | US, "fetch", dict(cpl=0, smep=True), PFErr.P | PFErr.ID),
        (P | RW | US, "fetch", dict(cpl=0, smep=True, nxe=False), PFErr.P | PFErr.ID),
        (P | RW | US, "fetch", dict(cpl=0, smep=False), None),
        (P | RW, "fetch", dict(cpl=0, smep=True), None),  # supervisor page
        (P | RW | US, "fetch", dict(cpl=3, smep=True), None),  # SMEP is for CPL < 3 only
        (P | RW | US, "read", dict(cpl=0, smep=True), None),
        # SMAP
        (P | RW | US, "read", dict(cpl=0, smap=True), PFErr.P),
        (P | RW | US, "write", dict(cpl=0, smap=True), PRW),
        (P | RW | US, "write", dict(cpl=0, smap=True, wp=False), PRW),
        (P | RW | US, "read", dict(cpl=0, smap=True, ac=True), None),
        (P | RW | US, "write", dict(cpl=0, smap=True, ac=True), None),
        (P | US, "write", dict(cpl=0, smap=True, ac=True), PRW),  # AC lifts SMAP, not WP
        (P | RW | US, "fetch", dict(cpl=0, smap=True), None),  # SMAP is for data only
        (P | RW, "read", dict(cpl=0, smap=True), None),  # supervisor page
        (P | RW | US, "write", dict(cpl=3, smap=True), None),  # SMAP is for CPL < 3 only
    ],
)
def test_leaf_rights(leaf, access, m, code):
    mem, tables, _ = setup(leaf=leaf)
    if code is None:
        assert do_walk(mem, tables, access, **m).pa == FRAME + 0xABC
    else:
        pf = fault(mem, tables, access, **m)
        assert pf.error_code == code, f"{pf.error_code!r} != {code!r}"
        assert len(pf.steps) == 4


@pytest.mark.parametrize("level", [4, 3, 2])
def test_upper_level_rights_combine(level):
    """R/W, U/S and NX in any non-leaf entry restrict the whole translation (§4.6.1)."""
    names = mmu.LEVEL_NAMES
    mem, tables, _ = setup(upper={level: P | US})  # read-only at one level
    pf = fault(mem, tables, "write", cpl=3)
    assert pf.error_code == PRW | PFErr.U
    assert pf.reason == f"R/W=0 in {names[level]}: read-only page" and pf.level == level
    pf = fault(mem, tables, "write", cpl=0, wp=True)
    assert pf.reason == f"R/W=0 in {names[level]}: read-only page, CR0.WP=1"
    assert do_walk(mem, tables, "write", cpl=0, wp=False).pa == FRAME + 0xABC

    mem, tables, _ = setup(upper={level: P | RW})  # supervisor at one level
    pf = fault(mem, tables, "read", cpl=3)
    assert pf.error_code == PFErr.P | PFErr.U
    assert pf.reason == f"U/S=0 in {names[level]}: supervisor page" and pf.level == level
    t = do_walk(mem, tables, "fetch", cpl=0, smep=True)  # a supervisor address: SMEP is fine
    assert not t.user

    mem, tables, _ = setup(upper={level: UPPER | NX})
    pf = fault(mem, tables, "fetch", cpl=3)
    assert pf.error_code == PFErr.P | PFErr.U | PFErr.ID
    assert pf.reason == f"NX=1 in {names[level]}: no-execute page" and pf.level == level


def test_smep_and_smap_reasons():
    mem, tables, _ = setup()
    pf = fault(mem, tables, "fetch", cpl=0, smep=True)
    assert pf.reason.startswith("SMEP") and pf.level == 1
    pf = fault(mem, tables, "read", cpl=0, smap=True)
    assert pf.reason.startswith("SMAP") and pf.level == 1


@pytest.mark.parametrize(
    "leaf, m, rights",
    [
        (P | RW | US, dict(cpl=3), (True, True, True, True)),
        (P | US, dict(cpl=3), (True, False, True, True)),
        (P | RW | US | NX, dict(cpl=3), (True, True, False, True)),
        (P | US, dict(cpl=0, wp=False), (True, True, True, True)),
        (P | US, dict(cpl=0, wp=True), (True, False, True, True)),
        (P | RW | US, dict(cpl=0, smep=True), (True, True, False, True)),
        (P | RW | US, dict(cpl=0, smap=True), (False, False, True, True)),
        (P | RW, dict(cpl=0, smap=True, smep=True), (True, True, True, False)),
    ],
)
def test_translation_reports_rights_for_the_mode(leaf, m, rights):
    mem, tables, _ = setup(leaf=leaf)
    access = "fetch" if rights[2] else "read"
    t = do_walk(mem, tables, access, **m)
    assert (t.readable, t.writable, t.executable, t.user) == rights


# --- access rights: every combination against a model written from the SDM's text -----


def sdm_outcome(entries, access, cpl, wp, nxe, smep, smap, ac):
    """None if allowed, else the error code, following SDM Vol. 3A §4.6.1 and §4.7."""
    code = (PFErr.W if access == "write" else 0) | (PFErr.U if cpl == 3 else 0)
    if access == "fetch" and (nxe or smep):
        code |= PFErr.ID
    if not nxe and any(e & NX for e in entries):
        return code | PFErr.P | PFErr.RSVD
    user_address = all(e & US for e in entries)
    all_writable = all(e & RW for e in entries)
    execute_disabled = nxe and any(e & NX for e in entries)
    if cpl == 3:
        allowed = (
            user_address
            and {
                "read": True,
                "write": all_writable,
                "fetch": not execute_disabled,
            }[access]
        )
    elif access == "fetch":
        allowed = not execute_disabled and not (smep and user_address)
    elif user_address and smap and not ac:
        allowed = False
    else:
        allowed = access == "read" or all_writable or not wp
    return None if allowed else code | PFErr.P


RIGHTS = [0, RW, US, NX, RW | US, RW | NX, US | NX, RW | US | NX]


@pytest.mark.parametrize(
    "size, upper_level",
    [(KIB4, 4), (KIB4, 3), (KIB4, 2), (MIB2, 4), (MIB2, 3), (GIB1, 4)],
)
def test_rights_match_the_sdm_model(size, upper_level):
    """Leaf R/W,U/S,NX x one upper entry's R/W,U/S,NX x CPL, WP, NXE, SMEP, SMAP, AC x access."""
    leaf_level = {KIB4: 1, MIB2: 2, GIB1: 3}[size]
    checked = 0
    for leaf_bits, upper_bits in itertools.product(RIGHTS, RIGHTS):
        mem, tables, where = setup(
            frame=GIB1, leaf=P | leaf_bits, size=size, upper={upper_level: P | upper_bits}
        )
        entries = [mem.q(where[lv]) for lv in range(4, leaf_level - 1, -1)]
        for cpl, wp, nxe, smep, smap, ac, access in itertools.product(
            [0, 3], *[[False, True]] * 5, ["read", "write", "fetch"]
        ):
            m = dict(cpl=cpl, wp=wp, nxe=nxe, smep=smep, smap=smap, ac=ac)
            want = sdm_outcome(entries, access, **m)
            try:
                got = None
                assert do_walk(mem, tables, access, **m).pa == GIB1 + (VA & (size - 1))
            except PageFault as pf:
                got = pf.error_code
            assert got == want, f"leaf={leaf_bits!r} upper={upper_bits!r} {access} {m}"
            checked += 1
    assert checked == 64 * 64 * 3


# --- accessed and dirty (§4.8) --------------------------------------------------------


def entries_of(mem, where):
    return {level: mem.q(ea) for level, ea in where.items()}


@pytest.mark.parametrize("size", [KIB4, MIB2, GIB1])
@pytest.mark.parametrize("access", ["read", "write", "fetch"])
def test_accessed_and_dirty_on_success(size, access):
    mem, tables, where = setup(frame=GIB1, size=size)
    before = entries_of(mem, where)
    t = do_walk(mem, tables, access, set_ad=True)
    after = entries_of(mem, where)
    leaf_level = min(where)
    for level in where:
        want = before[level] | A
        if level == leaf_level and access == "write":
            want |= D
        assert after[level] == want, mmu.LEVEL_NAMES[level]
    assert t.dirty == (access == "write")
    # the steps report the entries as read, before the update
    assert [s.value for s in t.steps] == [before[lv] for lv in sorted(where, reverse=True)]


def test_dirty_is_reported_and_kept():
    mem, tables, where = setup(leaf=P | RW | US | A | D)
    assert do_walk(mem, tables, "read", set_ad=True).dirty
    assert mem.q(where[1]) & D


def test_without_set_accessed_dirty_nothing_is_written():
    mem, tables, where = setup()
    before = bytes(mem.buf)
    for access in ("read", "write", "fetch"):
        do_walk(mem, tables, access)
    assert do_walk(mem, tables, "write").dirty is False
    for level in (4, 3, 2, 1):
        mem.set_q(where[level], 0)
        fault(mem, tables, "write")
        mem.buf[:] = before
    assert mem.writes == 0


def test_faulting_walk_sets_accessed_only_above_the_failure():
    """Not present at the PTE: PML4E, PDPTE, PDE were used and get A (as QEMU does)."""
    mem, tables, where = setup(leaf=0)
    before = entries_of(mem, where)
    fault(mem, tables, "write", set_ad=True)
    after = entries_of(mem, where)
    assert all(after[level] == before[level] | A for level in (4, 3, 2))
    assert after[1] == before[1]


@pytest.mark.parametrize("level", [4, 3, 2, 1])
def test_reserved_entry_does_not_get_accessed(level):
    mem, tables, where = setup()
    mem.set_q(where[level], mem.q(where[level]) | 1 << 51)
    fault(mem, tables, set_ad=True)
    after = entries_of(mem, where)
    for lv in where:
        assert bool(after[lv] & A) == (lv > level), mmu.LEVEL_NAMES[lv]


@pytest.mark.parametrize("size", [KIB4, MIB2, GIB1])
def test_protection_fault_leaves_leaf_untouched(size):
    """A permission fault sets A above the leaf, never in the leaf (for 1 GiB too: see
    test_mmu_qemu for QEMU's quirk there)."""
    mem, tables, where = setup(leaf=P | US, size=size)  # read-only
    leaf_level = min(where)
    fault(mem, tables, "write", set_ad=True)
    after = entries_of(mem, where)
    assert after[leaf_level] & (A | D) == 0
    assert all(after[lv] & A for lv in where if lv != leaf_level)


def test_large_leaf_reserved_fault_leaves_leaf_untouched():
    mem, tables, where = setup(frame=GIB1 | 1 << 13, size=GIB1)
    fault(mem, tables, set_ad=True)
    assert not mem.q(where[3]) & A and mem.q(where[4]) & A


def test_accessed_update_writes_only_the_low_byte():
    mem, tables, where = setup(leaf=P | RW | US | NX | 1 << 52)
    do_walk(mem, tables, "write", set_ad=True)
    assert mem.q(where[1]) == FRAME | P | RW | US | NX | 1 << 52 | A | D


# --- the walk's steps ------------------------------------------------------------------


def test_steps_contents():
    mem, tables, where = setup(leaf=P | RW | US | A)
    t = do_walk(mem, tables)
    assert t.steps == tuple(
        WalkStep(level, name, where[level], mem.q(where[level]), index)
        for level, name, index in [
            (4, "PML4E", 36),
            (3, "PDPTE", 209),
            (2, "PDE", 179),
            (1, "PTE", 393),
        ]
    )
    leaf = t.steps[-1]
    assert leaf.frame == FRAME
    assert leaf.flags == P | RW | US | A
    assert str(leaf) == f"PTE[393] @ {where[1]:#x} = 0x{FRAME | 0x27:016x} -> {FRAME:#x} P|RW|US|A"


def test_fault_carries_partial_steps():
    mem, tables, where = setup()
    mem.set_q(where[3], mem.q(where[3]) | 1 << 51)
    pf = fault(mem, tables, "write", cpl=3)
    assert [s.name for s in pf.steps] == ["PML4E", "PDPTE"]
    assert pf.steps[1].value == mem.q(where[3]) and pf.level == 3
    assert "reserved bit 51 set in PDPTE" in str(pf)
    assert pf.reason == "reserved bit 51 set in PDPTE"


def test_page_fault_message_names_address_and_code():
    mem, tables, _ = setup(leaf=P | US)
    pf = fault(mem, tables, "write")
    assert str(pf) == f"#PF at {VA:#x}: R/W=0 in PTE: read-only page (error code 0x7)"


# --- fill: the TLB-fill entry point ------------------------------------------------------


def do_fill(mem, tables, access, va=VA, **m):
    mo = mode(**m)
    return fill(
        mem, va, access, tables.cr3, mo["cpl"], mo["cr0"], mo["cr4"], mo["efer"], mo["rflags"]
    )


def test_fill_grants_write_only_once_dirty():
    mem, tables, where = setup()
    page, prot = do_fill(mem, tables, "read")
    assert page == FRAME and prot == Prot.READ | Prot.EXEC
    assert mem.q(where[1]) & (A | D) == A
    page, prot = do_fill(mem, tables, "write")
    assert prot == Prot.READ | Prot.WRITE | Prot.EXEC
    assert mem.q(where[1]) & D
    page, prot = do_fill(mem, tables, "read")
    assert prot == Prot.READ | Prot.WRITE | Prot.EXEC


@pytest.mark.parametrize(
    "leaf, access, m, prot",
    [
        (P | US | A | D, "read", dict(cpl=3), Prot.READ | Prot.EXEC),
        (P | RW | US | NX | D, "read", dict(cpl=3), Prot.READ | Prot.WRITE),
        (P | RW | D, "fetch", dict(cpl=0), Prot.READ | Prot.WRITE | Prot.EXEC),
        (P | RW | US | D, "fetch", dict(cpl=0, smap=True), Prot.EXEC),
        (P | RW | US | D, "read", dict(cpl=0, smep=True), Prot.READ | Prot.WRITE),
        (P | US | D, "write", dict(cpl=0, wp=False), Prot.READ | Prot.WRITE | Prot.EXEC),
    ],
)
def test_fill_prot(leaf, access, m, prot):
    mem, tables, _ = setup(leaf=leaf)
    assert do_fill(mem, tables, access, **m) == (FRAME, prot)


@pytest.mark.parametrize("size", [MIB2, GIB1])
def test_fill_returns_the_4k_page_inside_a_large_page(size):
    mem, tables, _ = setup(frame=GIB1, size=size)
    page, _ = do_fill(mem, tables, "read")
    assert page == GIB1 + (VA & (size - 1) & ~0xFFF)


def test_fill_faults_like_walk():
    mem, tables, _ = setup(leaf=P | US)
    with pytest.raises(PageFault) as info:
        do_fill(mem, tables, "write")
    assert info.value.error_code == PRW | PFErr.U


# --- robustness: whatever the tables hold, only #PF or #GP ------------------------------


def test_self_referencing_tables():
    """A PML4E that points to its own PML4 (the recursive-mapping trick) is a valid walk."""
    mem = FakeMemory()
    mem.set_q(0x1000 + 8 * 511, 0x1000 | P | RW)
    recursive = 0xFFFF_FFFF_FFFF_F000  # all four indices 511: the PML4 itself
    assert walk(mem, recursive + 8, "read", cr3=0x1000, **mode(cpl=0)).pa == 0x1008
    # every entry points at the first table: a loop, cut by the level count
    mem = FakeMemory()
    mem.set_q(0x1000, 0x1000 | P | RW | US)
    assert walk(mem, 0x10, "write", cr3=0x1000, **mode()).pa == 0x1010


def test_tables_beyond_ram_read_as_open_bus():
    """An entry pointing past RAM reads 0xFF..FF: present with reserved bits set."""
    mem = FakeMemory(size=0x4000)
    mem.set_q(0x1000, 0x0000_00FF_FFFF_F000 | P | RW | US)
    pf = fault(mem, Tables(mem), "read", va=0)
    assert pf.error_code == RSVD | PFErr.U and pf.level == 3
    fault(mem, Tables(mem), "read", va=0, set_ad=True)  # A writes beyond RAM are dropped


def garbage_ram(seed: int, size: int = 0x3000) -> bytes:
    """RAM of mostly plausible entries (frames inside RAM, random flags), some random
    quadwords, some zeroes: garbage that still lets walks get deep."""
    rnd = random.Random(seed)
    out = bytearray()
    for _ in range(size // 8):
        r = rnd.random()
        if r < 0.7:
            value = rnd.randrange(size >> 12) << 12 | rnd.getrandbits(12) & ~PS | P
            value ^= P if rnd.random() < 0.1 else 0
            value |= PS if rnd.random() < 0.25 else 0
            value |= NX if rnd.random() < 0.1 else 0
            value |= rnd.getrandbits(12) << 40 if rnd.random() < 0.05 else 0
        elif r < 0.85:
            value = rnd.getrandbits(64)
        else:
            value = 0
        out += value.to_bytes(8, "little")
    return bytes(out)


def _sign_extend(va48: int) -> int:
    return va48 | (0xFFFF_0000_0000_0000 if va48 >> 47 else 0)


@pytest.mark.fuzz
@settings(
    max_examples=examples(200),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    ram_seed=st.integers(0, (1 << 32) - 1),
    cr3=st.integers(0, 0x2FFF) | st.integers(0, (1 << 64) - 1),
    va=st.integers(0, (1 << 48) - 1).map(_sign_extend) | st.integers(0, (1 << 64) - 1),
    access=st.sampled_from(["read", "write", "fetch"]),
    cpl=st.sampled_from([0, 3]),
    cr0=st.integers(0, (1 << 32) - 1),
    cr4=st.integers(0, (1 << 32) - 1),
    efer=st.integers(0, (1 << 16) - 1) | st.sampled_from([0xD00, 0x500]),
    rflags=st.integers(0, (1 << 22) - 1),
    set_ad=st.booleans(),
    loops=st.lists(st.tuples(st.integers(0, 0x2FF8), st.integers(0, 2)), max_size=8),
    plants=st.lists(st.tuples(st.integers(0, 0x2FF8), st.integers(0, (1 << 64) - 1)), max_size=8),
)
def test_garbage_tables_raise_only_pf_or_gp(
    ram_seed, cr3, va, access, cpl, cr0, cr4, efer, rflags, set_ad, loops, plants
):
    """Random RAM, random control registers, entries that loop back into the tables,
    arbitrary 64-bit entries: the walker answers with a translation, #PF or #GP only."""
    mem = FakeMemory(size=0x3000)
    mem.buf[:] = garbage_ram(ram_seed)
    for offset, value in plants:
        mem.set_q(offset & ~7, value)
    for offset, target in loops:  # present entries pointing back into the tables
        mem.set_q(offset & ~7, (target << 12) | (mem.q(offset & ~7) & 0xFFF) | P)
    kw = dict(cr3=cr3, cpl=cpl, cr0=cr0, cr4=cr4, efer=efer, rflags=rflags)
    before = bytes(mem.buf)
    try:
        t = walk(mem, va, access, set_accessed_dirty=set_ad, **kw)
    except PageFault as pf:
        assert pf.address == va and pf.steps and pf.error_code & ~0x1F == 0
        assert pf.level in (1, 2, 3, 4) and pf.reason
        event(f"#PF at level {pf.level}: {pf.reason.split(':')[0].split(' set')[0]}")
    except GeneralProtection:
        assert not is_canonical(va)
        event("#GP")
    else:
        event(f"translated, {len(t.steps)} levels")
        assert is_canonical(va) and 0 <= t.pa < 1 << mmu.MAXPHYADDR
        assert t.page_size in (KIB4, MIB2, GIB1) and t.steps
        mem.buf[:] = before
        assert translate(mem, va, access, **kw) == t.pa
    if not set_ad:
        assert bytes(mem.buf) == before and mem.writes == 0
    try:
        fill(mem, va, access, cr3, cpl, cr0, cr4, efer, rflags)
    except (PageFault, GeneralProtection):
        pass
