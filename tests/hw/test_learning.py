"""Learning a block (its first entry while counting per block): the page walk of its page
is done once per code page, and answered again only while the paging-structure entries it
read still hold what it read (emu/hw/cpu.py `Cpu._code_page`)."""

from __future__ import annotations

import pytest

from emu.hw import blocks as blocks_module
from emu.hw import cpu as cpu_module
from emu.hw import native

MAIN = 0x401000          # `loop`'s main, on the first page of its .text (read-only, R/W = 0)
PTE_RW = 1 << 1


@pytest.fixture
def walks(monkeypatch) -> list[int]:
    """The pages every Cpu.walk of the test walks."""
    seen: list[int] = []
    walk = cpu_module.Cpu.walk

    def counted(self, va, access, **kwargs):
        seen.append(va & ~0xFFF)
        return walk(self, va, access, **kwargs)

    monkeypatch.setattr(cpu_module.Cpu, "walk", counted)
    return seen


def test_learning_walks_each_code_page_once_not_each_block(machine_factory, apps, walks,
                                                          monkeypatch) -> None:
    monkeypatch.setattr(native, "PER_INSTRUCTION", False)
    m = machine_factory(max_insns=1 << 40)
    proc = m.spawn(apps / "loop", ["1000"])
    m.run()
    assert proc.exit_status == 0
    learned = m.executive.cpu.native.learned
    assert learned > 40                      # start-up, strtoul, printf, the kernel's stubs
    # A page is walked again only when an entry its walk read changed (an A bit set by a
    # fill in between): never once per block.
    assert len(walks) <= 2 * len(set(walks)) < learned // 5


def test_a_paging_entry_changed_without_invalidation_is_seen_by_the_next_learn(
        machine_factory, apps, walks) -> None:
    """The kept walk is checked against the entries it read: a PTE rewritten in place (no
    INVLPG, no flush) makes the next learn walk again and see the page as it now is."""
    m = machine_factory(max_insns=20_000)
    proc = m.spawn(apps / "loop", ["100000"])
    m.run()                                  # stopped by the limit, `loop` still current
    assert proc.exit_status is None
    cpu = m.executive.cpu
    before = cpu._code_page(MAIN)
    assert not before.writable
    pte = before.steps[-1]
    assert cpu._code_page(MAIN) is before    # nothing changed: answered again, no walk
    walked = len(walks)
    m.mem.write(pte.entry_address, (pte.value | PTE_RW).to_bytes(8, "little"))
    now = cpu._code_page(MAIN)
    assert now.writable and now.pa == before.pa
    assert len(walks) == walked + 1
    m.mem.write(pte.entry_address, pte.value.to_bytes(8, "little"))
    assert not cpu._code_page(MAIN).writable


def test_a_later_machine_learns_the_blocks_it_shares_without_decoding_them(
        machine_factory, apps, monkeypatch) -> None:
    """The instruction offsets are a function of a block's bytes: a second machine of the
    process (a debugger's re-execution, a query's machine) takes them from the first's."""
    monkeypatch.setattr(native, "PER_INSTRUCTION", False)
    decoded = blocks_module.instruction_offsets

    def counted_run() -> tuple[int, int, int]:
        m = machine_factory(max_insns=1 << 40)
        proc = m.spawn(apps / "loop", ["1000"])
        misses = decoded.cache_info().misses
        m.run()
        return proc.exit_status, m.executive.cpu.native.learned, \
            decoded.cache_info().misses - misses

    first, second = counted_run(), counted_run()
    assert first[:2] == second[:2] == (0, first[1]) and first[1] > 40
    assert second[2] == 0                    # every block of the second run: no decoding
