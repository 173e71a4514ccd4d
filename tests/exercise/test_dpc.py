"""emu exercise dpc: 200 seeds; the answer agrees with what each process's page holds when
it exits (read through the executive, not the write hook that made the answer)."""

from __future__ import annotations

import pytest

from emu.exercise import cli, dpc
from emu.nt import layout

SEEDS = range(200)
DATA = b"data from the slow device"


@pytest.fixture(scope="module")
def pages(apps) -> dict:
    """(method, victim_first) -> {pid: the first bytes of its page at exit}."""
    from emu.machine import Machine
    from emu.scenarios.watch import read_user

    out = {}
    for method in dpc.METHODS:
        for victim_first in (False, True):
            m = Machine("64M")
            try:
                m.add_driver(apps.parent / "drivers" / f"slow{method}.sys")
                specs = [("slowread", [f"\\Device\\Slow{method.capitalize()}"]),
                         ("victim", [])]
                if victim_first:
                    specs.reverse()
                seen = {}
                m.executive.exit_observers.append(
                    lambda p, seen=seen: seen.__setitem__(p.pid, read_user(p, dpc.PAGE_VA,
                                                                           32)))
                for name, args in specs:
                    m.spawn(apps / name, args)
                m.run()
            finally:
                m.close()
            out[(method, victim_first)] = seen
    return out


@pytest.mark.parametrize("seed", SEEDS)
def test_answer_agrees_with_the_pages(pages, seed):
    e = dpc.generate(None, seed)
    f = e.facts
    victim_first = f["victim"] < f["requester"]
    seen = pages[(f["method"], victim_first)]
    assert f["interrupted"] == f["victim"]
    if f["method"] == "neither":        # the raw user address, in the interrupted process
        assert f["owner"] == f["victim"] and seen[f["victim"]].startswith(DATA)
        assert not seen[f["requester"]].startswith(DATA)
    elif f["method"] == "direct":       # the MDL's kernel mapping of the requester's frame
        assert f["owner"] == f["requester"] and seen[f["requester"]].startswith(DATA)
        assert all(s["va"] >= layout.KERNEL_SPACE_START for s in f["stores"])
    else:                               # the system buffer: kernel pool, copied later
        assert f["owner"] is None and e.answer == "none"
        assert seen[f["requester"]].startswith(DATA)
    assert not (f["method"] != "neither" and seen[f["victim"]].startswith(DATA))


@pytest.mark.parametrize("seed", SEEDS)
def test_check_accepts_the_answer_and_refuses_another(apps, seed):
    e = dpc.generate(None, seed)
    right, text = cli.verdict(e, e.answer)
    assert right and text.startswith(f"right: {e.answer}\n") and "DPC" in text
    owner = e.facts["owner"]
    by_name = {None: "none", e.facts["victim"]: "victim", e.facts["requester"]: "slowread"}
    assert cli.verdict(e, by_name[owner])[0]
    wrong = "none" if owner is not None else str(e.facts["victim"])
    right, text = cli.verdict(e, wrong)
    assert not right and text.startswith(f"wrong: you answered {wrong}; the machine says ")
    assert "the DPC stored 28 bytes" in text


def test_every_method_is_asked(apps):
    assert {dpc.generate(None, s).facts["method"] for s in SEEDS} == set(dpc.METHODS)


@pytest.mark.parametrize("answer", ["", "0x", "somebody", "99999999999999999999999"])
def test_malformed_answers(answer, capsys):
    assert cli.run(["check", "dpc", "--seed", "1", answer]) == 2
    err = capsys.readouterr().err
    assert err.startswith("emu: error: ") and err.count("\n") == 1
