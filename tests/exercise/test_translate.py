"""emu exercise translate: 200 seeds, each answer checked against the executive's own books
(the PFN database and the VADs), not the walker that made it; check's verdicts."""

from __future__ import annotations

import pytest

from emu.exercise import cli, scenes, translate
from emu.hw import mmu
from emu.nt import layout
from emu.nt.mm.pfn import FrameUse

SEEDS = range(200)
_WRITABLE = {0x04, 0x08, 0x40, 0x80}          # winnt.h PAGE_*READWRITE / *WRITECOPY
_EXECUTABLE = {0x10, 0x20, 0x40, 0x80}        # PAGE_EXECUTE*


@pytest.fixture(scope="module")
def scene(apps) -> scenes.Scene:
    return scenes.spaces()


@pytest.fixture(scope="module")
def frames(scene) -> dict[tuple, int]:
    """(owner pid or None, page) -> frame, from the PFN database."""
    out = {}
    for pfn, entry in scene.machine.executive.mm.pfn.entries.existing().items():
        if entry.use in (FrameUse.PRIVATE, FrameUse.KERNEL) and entry.va is not None:
            out[(entry.owner, entry.va)] = pfn
    return out


def _expected_code(f: dict, present: bool) -> int:
    """The error code SDM §4.7 gives this access (EFER.NXE = 1 on this machine)."""
    code = (mmu.PFErr.P if present else 0) | (mmu.PFErr.U if f["ring"] == 3 else 0)
    code |= mmu.PFErr.W if f["access"] == "write" else 0
    code |= mmu.PFErr.ID if f["access"] == "fetch" else 0
    return int(code)


@pytest.mark.parametrize("seed", SEEDS)
def test_answer_agrees_with_the_executive(scene, frames, seed):
    e = translate.generate(scene, seed)
    f = e.facts
    va, page = f["va"], f["va"] & ~0xFFF
    if not mmu.is_canonical(va):
        assert f["fault"] == "#GP" and e.answer == "#GP"
        return
    kernel = va >= layout.KERNEL_SPACE_START
    owner = None if kernel else f["pid"]
    frame = frames.get((owner, page))
    if "pa" in f:
        assert frame is not None and f["pa"] == frame << 12 | (va & 0xFFF)
        assert e.answer == hex(f["pa"])
        return
    assert f["fault"] == "#PF"
    assert f["error_code"] == _expected_code(f, frame is not None), e.explanation
    if frame is None:
        return
    # Present: a right must be missing (SDM §4.6), as the VAD's protection says.
    if kernel:
        assert f["ring"] == 3 or f["access"] != "read"
        return
    proc = next(p for p in scene.machine.processes if p.pid == f["pid"])
    protect = proc.vads.find(va).run_at(page).protect & 0xFF
    if f["access"] == "write":
        assert protect not in _WRITABLE
    elif f["access"] == "fetch":
        assert f["ring"] == 0 or protect not in _EXECUTABLE     # ring 0: SMEP (CR4 bit 20)
    else:
        pytest.fail(f"a read of a present user page refused: {e.explanation}")


@pytest.mark.parametrize("seed", SEEDS)
def test_check_accepts_the_answer_and_refuses_another(scene, seed):
    e = translate.generate(scene, seed)
    right, text = cli.verdict(e, e.answer)
    assert right and text.startswith(f"right: {e.answer}\nwalk {e.facts['va']:#x}")
    wrong = "#GP" if e.answer != "#GP" else "0x1000"
    right, text = cli.verdict(e, wrong)
    assert not right
    assert text.startswith(f"wrong: you answered {wrong}; the machine says {e.answer}\n")
    assert e.explanation in text


def test_the_mix_has_every_outcome(scene):
    answers = [translate.generate(scene, s).facts for s in SEEDS]
    assert any("pa" in f for f in answers)
    assert any(f.get("fault") == "#GP" for f in answers)
    codes = {f["error_code"] for f in answers if f.get("fault") == "#PF"}
    assert {0x4, 0x5, 0x6, 0x7, 0x14, 0x15} <= codes


def test_same_seed_same_exercise(scene):
    assert translate.generate(scene, 7) == translate.generate(scene, 7)
    assert translate.generate(scene, 7).question != translate.generate(scene, 8).question


@pytest.mark.parametrize(("answer", "expected"), [
    ("0x41569", {"pa": 0x41569}), ("267625", {"pa": 267625}), ("0x4_1569", {"pa": 0x41569}),
    ("#PF 0x7", {"fault": "#PF", "error_code": 7}), ("#pf 7", {"fault": "#PF", "error_code": 7}),
    ("#PF P|W|U", {"fault": "#PF", "error_code": 7}),
    ("fault U/S + I/D", {"fault": "#PF", "error_code": 0x14}),
    ("PF p,w", {"fault": "#PF", "error_code": 3}), ("#GP", {"fault": "#GP"}),
    ("#PF 0x5 (P|U)", {"fault": "#PF", "error_code": 5}),
    ("#GP(0)", {"fault": "#GP"}), ("gp", {"fault": "#GP"})])
def test_answer_grammar(answer, expected):
    assert translate.parse(answer) == expected


@pytest.mark.parametrize(("answer", "message"), [
    ("0x", "physical address '0x': 0x with no hex digits after it"),
    ("0x10000000000000000", "physical address '0x10000000000000000': wider than 64 bits"),
    ("18446744073709551616", "wider than 64 bits"),
    ("0xfg", "not a hex number"), ("twelve", "not a number"),
    ("#PF", "missing the error code after #PF"), ("#PF P|X", "unknown bit 'X'"),
    ("#PF 0x20", "only bits 0-4"), ("#PF 0x", "0x with no hex digits"),
    ("#PF 0x5 (P|W|U)", "0x5 is not P|W|U")])
def test_malformed_answers(answer, message, capsys):
    status = cli.run(["check", "translate", "--seed", "1", answer])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and err.startswith("emu: error: ")
    assert message in err


@pytest.mark.parametrize("seed", range(0, 200, 9))
def test_explanation_is_the_debuggers_walk(scene, seed):
    from emu.debugger.shell import Shell

    e = translate.generate(scene, seed)
    f = e.facts
    ring = "user" if f["ring"] == 3 else "kernel"
    out = Shell(scene.target).run_command(f"walk {f['va']:#x} {f['pid']} {f['access']} {ring}")
    assert out.rstrip("\n") == e.explanation
