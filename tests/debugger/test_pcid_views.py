"""The debugger's views of PCIDs: `tlb` shows the PCID each translation was cached for (and
the process whose address space holds it), `info cr` and `registers` show CR4.PCIDE and the
PCID in CR3[11:0] (SDM Vol. 3A 4.10.1)."""

from __future__ import annotations

import pytest
from state_harness import pid_of, two_processes

from emu.debugger import mapview, regview
from emu.debugger.live import LiveTarget


@pytest.fixture
def pair():
    m = two_processes()
    yield m, LiveTarget(m)
    m.close()


def test_tlb_shows_each_entry_s_pcid_and_its_process(pair):
    m, t = pair
    notepad, myapp = pid_of(m, "notepad"), pid_of(m, "myapp")
    pcids = {p.pid: p.space.pcid for p in m.processes}
    text = mapview.tlb_text(t, show_all=True)
    lines = text.splitlines()
    assert lines[2] == (f"  tagged by PCID (CR3[11:0] when cached; the current PCID is "
                        f"{m.executive.cpu.pcid}); \"global\" serves every PCID")
    assert lines[3].split() == ["mode", "pcid", "virtual", "page", "physical", "page", "rights"]
    # Both processes' translations are there at once, each under its own PCID.
    assert f"  user         {pcids[notepad]} (pid {notepad})" in text
    assert f"  user         {pcids[myapp]} (pid {myapp})" in text


def test_tlb_of_one_page_checks_each_pcid_against_its_own_tables(pair):
    m, t = pair
    shared = {e.vpage for e in t.tlb() if e.mode == "user" and e.pcid == 2} & \
        {e.vpage for e in t.tlb() if e.mode == "user" and e.pcid == 3}
    page = min(shared)                 # the same address in both: two frames
    text = mapview.tlb_text(t, page)
    rows = [line for line in text.splitlines() if line.startswith("  user")]
    assert len(rows) == 2
    assert all(line.endswith("agrees with the page tables") for line in rows)
    frames = {line.split()[5] for line in rows}   # mode, pcid (pid N), va, pa
    assert len(frames) == 2


def test_a_translation_left_under_a_free_pcid_is_called_stale(pair):
    m, t = pair
    native = m.executive.cpu.native
    from emu.hw.native import Mode
    native.set_pcid(77)
    native.insert(Mode.USER, [(0x7000_0000, 0x5000 | 1)])
    native.set_pcid(m.executive.cpu.pcid)
    text = mapview.tlb_text(t, 0x7000_0000)
    assert "  user         77 (free)      0x0000000070000000 0x5000         r--  STALE: no " \
        "address space holds its PCID (flushed before it is handed out)" in text


def test_info_cr_and_registers_show_pcide_and_the_pcid(pair):
    m, t = pair
    cpu = m.executive.cpu
    bits = regview.control_text(t)
    assert "  bit 17  PCIDE      1  PCIDs: CR3[11:0] tags what the TLB caches; a switch " \
        "keeps it" in bits
    assert f"cr3 = {cpu.cr3 | cpu.pcid:#018x}  the PML4's physical address (bits 12-51: " \
        f"{cpu.cr3:#x}), PCID {cpu.pcid} (bits 11:0)" in bits
    regs = regview.registers_text(t)
    assert f"cr3  {cpu.cr3 | cpu.pcid:#018x}  PML4 at physical {cpu.cr3:#x}, PCID " \
        f"{cpu.pcid} (bits 11:0)" in regs
    other = next(p for p in m.processes if p.space.cr3 != cpu.cr3)
    assert f"PCID {other.space.pcid} (bits 11:0)" in regview.registers_text(t, other.pid)
