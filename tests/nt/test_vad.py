"""The VAD set as a pure data structure (emu.nt.mm.vad): no machine needed."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emu.nt.mm.vad import (
    ALLOCATION_GRANULARITY,
    PAGE_SIZE,
    CommitCharge,
    MemState,
    MemType,
    PageProtect,
    RegionInfo,
    Run,
    Vad,
    VadSet,
    granule_down,
    granule_up,
    page_down,
    page_up,
    table_spans,
)

COMMIT, RESERVE, FREE = MemState.MEM_COMMIT, MemState.MEM_RESERVE, MemState.MEM_FREE
RW, RO = PageProtect.PAGE_READWRITE, PageProtect.PAGE_READONLY
HIGHEST = 0x7FFF_FFFE_FFFF
P = PAGE_SIZE


def private(base: int, pages: int, protect: int = RW) -> Vad:
    return Vad(base, base + pages * P, protect, MemType.MEM_PRIVATE)


def test_rounding_helpers():
    assert (page_down(0x12345), page_up(0x12345), page_up(0x12000)) == (0x12000, 0x13000, 0x12000)
    assert (granule_down(0x2FFFF), granule_up(0x20001)) == (0x20000, 0x30000)
    assert ALLOCATION_GRANULARITY == 16 * PAGE_SIZE


def test_a_new_vad_is_one_reserved_run():
    vad = private(0x10000, 16)
    assert vad.runs == [Run(0x10000, 0x20000, RESERVE, 0)]
    assert vad.count(vad.base, vad.end, RESERVE) == 16


def test_commit_in_the_middle_splits_and_decommit_merges_back():
    vad = private(0x10000, 16)
    vad.set_range(0x14000, 0x16000, COMMIT, RO)
    assert [(r.start, r.end, r.state, r.protect) for r in vad.runs] == [
        (0x10000, 0x14000, RESERVE, 0), (0x14000, 0x16000, COMMIT, RO),
        (0x16000, 0x20000, RESERVE, 0)]
    vad.set_range(0x14000, 0x16000, RESERVE, RO)          # a reserved page has no protection
    assert vad.runs == [Run(0x10000, 0x20000, RESERVE, 0)]


def test_neighbours_merge_only_when_state_and_protection_match():
    vad = private(0x10000, 4)
    vad.set_range(0x10000, 0x12000, COMMIT, RW)
    vad.set_range(0x12000, 0x13000, COMMIT, RO)
    assert len(vad.runs) == 3
    vad.set_range(0x12000, 0x13000, COMMIT, RW)
    assert vad.runs[0] == Run(0x10000, 0x13000, COMMIT, RW)
    assert vad.run_at(0x12FFF) == vad.runs[0] and vad.run_at(0x13000).state == RESERVE


def test_set_range_outside_the_vad_is_a_loud_bug():
    vad = private(0x10000, 4)
    with pytest.raises(AssertionError, match="set_range"):
        vad.set_range(0xF000, 0x11000, COMMIT, RW)
    with pytest.raises(AssertionError, match="run_at"):
        vad.run_at(0x20000)


def test_region_runs_from_the_queried_page_to_the_end_of_its_run():
    vad = private(0x10000, 16, RW)
    vad.set_range(0x14000, 0x16000, COMMIT, RO | PageProtect.PAGE_GUARD)
    info = vad.region(0x14ABC)
    assert info == RegionInfo(0x14000, 0x10000, RW, 0x2000, COMMIT, 0x102,
                              MemType.MEM_PRIVATE)


def test_vad_set_find_insert_remove():
    vads = VadSet(HIGHEST)
    a = vads.insert(private(0x10000, 4))
    b = vads.insert(private(0x400000, 1))
    assert vads.find(0x10000) is a and vads.find(0x13FFF) is a and vads.find(0x14000) is None
    assert vads.find(0x400FFF) is b and list(vads) == [a, b]
    with pytest.raises(AssertionError, match="overlaps"):
        vads.insert(private(0x10000, 1))
    with pytest.raises(AssertionError, match="outside"):
        vads.insert(private(0x0, 1))
    vads.remove(a)
    assert vads.find(0x10000) is None and len(vads) == 1


def test_find_free_is_bottom_up_from_64k_on_64k_boundaries():
    vads = VadSet(HIGHEST)
    assert vads.find_free(P) == 0x10000
    vads.insert(private(0x10000, 1))                    # ends at 0x11000
    assert vads.find_free(P) == 0x20000                 # the next granule, not 0x11000
    vads.insert(private(0x20000, 16))
    assert vads.find_free(17 * P) == 0x30000


def test_find_free_top_down_and_when_nothing_fits():
    vads = VadSet(0x7FFF_FFFF)                          # a 2 GiB (32-bit) user space
    assert vads.find_free(P, top_down=True) == 0x7FFF_0000
    assert vads.find_free(0x8000_0000) is None
    vads.insert(private(0x7FFF_0000, 16))
    assert vads.find_free(P, top_down=True) == 0x7FFE_0000


def test_gaps_between_allocations():
    vads = VadSet(0xFFFFF)
    vads.insert(private(0x20000, 1))
    assert vads.gaps() == [(0x10000, 0x20000), (0x21000, 0x100000)]


def test_query_of_free_memory_reaches_the_next_allocation():
    vads = VadSet(HIGHEST)
    vads.insert(private(0x400000, 1))
    info = vads.query(0x1234)
    assert (info.base, info.size, info.state, info.protect, info.type, info.allocation_base) == \
        (0x1000, 0x3FF000, FREE, PageProtect.PAGE_NOACCESS, 0, 0)
    top = vads.query(HIGHEST)
    assert (top.base, top.size) == (0x7FFF_FFFE_F000, P)


def test_memory_basic_information_is_the_48_byte_x64_layout():
    info = RegionInfo(0x10000, 0x10000, 0x104, 0x2000, COMMIT, 0x104, MemType.MEM_PRIVATE)
    raw = info.pack()
    assert len(raw) == 48
    assert struct.unpack_from("<QQIHHQIIII", raw) == (
        0x10000, 0x10000, 0x104, 0, 0, 0x2000, 0x1000, 0x104, 0x20000, 0)


def test_table_spans_count_the_tables_a_range_needs():
    assert table_spans(0x400000, 0x401000) == {(1, 2), (2, 0), (3, 0)}
    # 4 MiB from 0x10000: three page tables (0-2, 2-4, 4-6 MiB), one PD, one PDPT.
    assert len(table_spans(0x10000, 0x410000)) == 5
    charge = CommitCharge(pages=3, table_spans=table_spans(0, P))
    assert (charge.tables, charge.total) == (4, 7)


def test_committed_pages_sums_every_vad():
    vads = VadSet(HIGHEST)
    a = vads.insert(private(0x10000, 16))
    b = vads.insert(private(0x20000, 4))
    a.set_range(0x11000, 0x13000, COMMIT, RW)
    b.set_range(0x20000, 0x24000, COMMIT, RO)
    assert vads.committed_pages() == 6


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 31), st.integers(1, 8), st.booleans(),
                          st.sampled_from([RW, RO, PageProtect.PAGE_EXECUTE_READ])),
                max_size=30))
def test_runs_always_match_a_page_by_page_model(operations):
    """Whatever sequence of changes: runs tile the VAD, no two neighbours are alike,
    and each page reads back what was last set on it."""
    base, pages = 0x100000, 32
    vad = private(base, pages)
    model = [(RESERVE, 0)] * pages
    for first, count, commit, protect in operations:
        last = min(pages, first + count)
        state = COMMIT if commit else RESERVE
        vad.set_range(base + first * P, base + last * P, state, protect)
        for i in range(first, last):
            model[i] = (state, protect if commit else 0)
    assert vad.runs[0].start == base and vad.runs[-1].end == vad.end
    for left, right in zip(vad.runs, vad.runs[1:], strict=False):
        assert left.end == right.start and not left.same_kind(right)
    for i, (state, protect) in enumerate(model):
        run = vad.run_at(base + i * P)
        assert (run.state, run.protect) == (state, protect)


def test_a_32_bit_process_gets_memory_basic_information32():
    info = RegionInfo(0x10000, 0x10000, 0x4, 0x2000, COMMIT, 0x4, MemType.MEM_PRIVATE)
    assert info.pack(32) == struct.pack("<7I", 0x10000, 0x10000, 4, 0x2000, 0x1000, 4, 0x20000)
