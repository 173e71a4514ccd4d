"""emu exercise refuse: 200 seeds; the changes are made in the machine's RAM and the guest's
access is walked again there: all of them allow it, any one left out does not."""

from __future__ import annotations

import pytest

from emu.exercise import cli, refuse, scenes
from emu.hw import mmu
from emu.hw.mmu import PTE

SEEDS = range(200)
_BIT = {"US": PTE.US, "RW": PTE.RW, "NX": PTE.NX}


@pytest.fixture(scope="module")
def scene(apps) -> scenes.Scene:
    return scenes.spaces()


def _walk_with(scene, exercise, changes) -> bool:
    """Make ``changes`` in guest RAM, walk the access at ring 3, put RAM back: allowed?"""
    f = exercise.facts
    target = scene.target
    saved = {c["entry_address"]: target.read_physical(c["entry_address"], 8) for c in changes}
    try:
        for c in changes:
            ea = c["entry_address"]
            value = int.from_bytes(target.read_physical(ea, 8), "little")
            bit = int(_BIT[c["bit"]])
            value = value | bit if c["value"] else value & ~bit
            target.write_physical(ea, value.to_bytes(8, "little"))
        regs = target.registers()
        try:
            mmu.walk(target.memory(), f["va"], f["access"], cr3=f["cr3"], cpl=3,
                     cr0=regs["cr0"], cr4=regs["cr4"], efer=regs["efer"])
        except mmu.PageFault:
            return False
        return True
    finally:
        for ea, data in saved.items():
            target.write_physical(ea, data)


@pytest.mark.parametrize("seed", SEEDS)
def test_changes_are_needed_and_enough(scene, seed):
    e = refuse.generate(scene, seed)
    changes = e.facts["changes"]
    assert changes
    assert not _walk_with(scene, e, [])                  # refused as the machine stands
    assert _walk_with(scene, e, changes)                 # every change made: allowed
    for i in range(len(changes)):                        # any one left out: refused
        assert not _walk_with(scene, e, changes[:i] + changes[i + 1:])
    for c in changes:             # each change flips a bit that holds the other value now
        value = int.from_bytes(scene.target.read_physical(c["entry_address"], 8), "little")
        assert bool(value & _BIT[c["bit"]]) != bool(c["value"])


@pytest.mark.parametrize("seed", SEEDS)
def test_check_accepts_the_answer_and_refuses_another(scene, seed):
    e = refuse.generate(scene, seed)
    right, text = cli.verdict(e, e.answer)
    assert right and text.startswith(f"right: {e.answer}\nwalk ")
    wrong = "PTE.RW=1" if e.answer != "PTE.RW=1" else "PTE.US=1"
    right, text = cli.verdict(e, wrong)
    assert not right and text.startswith(f"wrong: you answered {wrong}; the machine says ")
    assert "The changes, each found by walking again" in text


def test_every_bit_is_asked(scene):
    bits = {c["bit"] for s in SEEDS for c in refuse.generate(scene, s).facts["changes"]}
    assert bits == {"US", "RW", "NX"}


@pytest.mark.parametrize(("answer", "expected"), [
    ("PTE.RW=1", {("PTE", "RW", 1)}), ("pte rw=1", {("PTE", "RW", 1)}),
    ("PTE R/W = 1", {("PTE", "RW", 1)}), ("PTE.XD=0", {("PTE", "NX", 0)}),
    ("PML4E.US=1, PDPTE.U/S=1 PDE.US=1 PTE.US=1",
     {("PML4E", "US", 1), ("PDPTE", "US", 1), ("PDE", "US", 1), ("PTE", "US", 1)})])
def test_answer_grammar(answer, expected):
    assert refuse.parse(answer) == expected


@pytest.mark.parametrize(("answer", "message"), [
    ("PTE.RW", "expected ENTRY.BIT=VALUE"), ("PTE.RW=2", "a bit is 0 or 1"),
    ("PTE.RW=0x", "0x with no hex digits"), ("PTE.P=1", "expected ENTRY.BIT=VALUE"),
    ("PT.RW=1", "expected ENTRY.BIT=VALUE")])
def test_malformed_answers(answer, message, capsys):
    status = cli.run(["check", "refuse", "--seed", "1", answer])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and message in err
