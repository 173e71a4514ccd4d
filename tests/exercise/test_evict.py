"""emu exercise evict: 200 seeds; the page the machine's trimmer took is the one the clock
policy of docs/paging.md picks from the recorded clocks, and its PTE is no longer valid."""

from __future__ import annotations

from collections import deque

import pytest

from emu.exercise import cli, evict
from emu.hw.mmu import PTE
from emu.nt.mm import softpte
from emu.nt.mm.softpte import PteState

SEEDS = range(200)


def _documented_choice(clocks) -> tuple[int | None, int]:
    """docs/paging.md, "Trimming": visit the working sets in turn, each hand up to 64 pages;
    A = 1: clear it, to the back (a second chance); A still 0: trimmed."""
    for owner, _, size, pages in clocks:
        clock = deque([page, accessed, locked] for page, accessed, locked in pages)
        for _ in range(min(64, size)):
            if not clock:
                break
            page = clock.popleft()
            if page[1] or page[2]:
                page[1] = 0
                clock.append(page)
                continue
            return owner, page[0]
    raise AssertionError("no page to trim in the recorded clocks")


@pytest.fixture(scope="module")
def played(apps):
    return evict.played()


@pytest.mark.parametrize("seed", SEEDS)
def test_answer_is_the_documented_clock_choice(played, seed):
    e = evict.generate(None, seed)
    f = e.facts
    trim = played["trims"][f["trim"] - 1]
    assert _documented_choice(trim["clocks"]) == (f["pid"], f["va"])
    assert f["pid"] in played["pids"]
    pte = f["pte_after"]
    assert not pte & PTE.P
    assert softpte.decode(pte).state in (PteState.TRANSITION, PteState.DEMAND_ZERO)
    assert e.answer == f"{f['pid']} {f['va']:#x}"
    assert f"    {f['va']:#x} A=0" in e.question


@pytest.mark.parametrize("seed", SEEDS)
def test_check_accepts_the_answer_and_refuses_another(played, seed):
    e = evict.generate(None, seed)
    right, text = cli.verdict(e, e.answer)
    assert right and text.startswith(f"right: {e.answer}\nThe trimmer's hand")
    assert cli.verdict(e, f"pid {e.facts['pid']}, {e.facts['va'] | 0x123:#x}")[0]
    other = [p for p in played["pids"] if p != e.facts["pid"]][0]
    wrong = f"{other} {e.facts['va']:#x}"
    right, text = cli.verdict(e, wrong)
    assert not right and text.startswith(f"wrong: you answered {wrong}; the machine says")
    assert f"Its PTE at {e.facts['pte_address']:#x} is now" in text


def test_most_questions_need_second_chances(played):
    passed = [evict._second_chances(played["trims"][evict.generate(None, s).facts["trim"] - 1])
              for s in SEEDS]
    assert sum(1 for n in passed if n) > len(SEEDS) // 2


@pytest.mark.parametrize(("answer", "message"), [
    ("12", "give the process and the page"), ("12 0x", "0x with no hex digits"),
    ("12 0x10000000000000000", "wider than 64 bits"), ("a b", "not a number")])
def test_malformed_answers(answer, message, capsys):
    assert cli.run(["check", "evict", "--seed", "1", answer]) == 2
    err = capsys.readouterr().err
    assert err.startswith("emu: error: ") and err.count("\n") == 1 and message in err
