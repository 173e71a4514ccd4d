"""emu exercise bugcheck: 200 seeds; each answer is the stop code and parameter 1 that
docs/drivers.md and guest/README.md give for the driver (PRINTED: the address the driver
prints before the stop), and the explanation is the blue screen `emu run` shows."""

from __future__ import annotations

import emurun
import pytest

from emu.exercise import bugcheck, cli

SEEDS = range(200)
PRINTED = "printed"
# driver -> (code, parameter 1), as the docs give them (None: an address only the run knows).
DOCUMENTED = {
    "crash.sys": (0x50, 0xFFFF900000000000), "bugcheck.sys": (0xE2, 1),
    "rowrite.sys": (0xBE, PRINTED), "twice.sys": (0x44, None), "nxpool.sys": (0xFC, PRINTED),
    "smep.sys": (0xFC, 0x401000), "pagedpool.sys": (0xD1, PRINTED),
    "peirqlpage.sys": (0xD1, None), "pepooltwice.sys": (0xC2, 7),
    "pepooltag.sys": (0xC2, 0xA), "pepoolbad.sys": (0xC2, 0x42),
    "pepoolraise.sys": (0x7E, 0xC000009A), "pemdltwice.sys": (0x76, 1),
    "pemdlbad.sys": (0x7E, 0xC0000005), "pemdlleak.sys": (0x76, 0),
    "peirqlraise.sys": (0x9, 1), "peirqlspin.sys": (0xF, PRINTED),
    "peirqlleak.sys": (0x4A, None), "peirqlgp.sys": (0x7E, 0xC0000005),
    "peretentry.sys": (0xE1, None), "pederef.sys": (0x18, None), "pewaitmany.sys": (0xC, 0),
    "pefastfail.sys": (0x139, 5), "petime.sys": (0xBE, 0xFFFFF78000000014),
    "pebadevent.sys": (0x50, 0xFFFF900000000004), "pesehentry.sys": (0x7E, 0xC0000005),
    "pertlbad.sys": (0x50, 0xFFFF900000000010), "pecrash.sys": (0x50, 0xFFFF900000000000),
}


def test_every_driver_is_documented():
    assert {name for name, _ in bugcheck.DRIVERS} == set(DOCUMENTED)


@pytest.mark.parametrize("seed", SEEDS)
def test_answer_is_the_documented_stop(apps, seed):
    e = bugcheck.generate(None, seed)
    f = e.facts
    code, param = DOCUMENTED[f["driver"]]
    assert f["code"] == code
    if param == PRINTED:
        assert f"{f['params'][0]:016X}" in e.question
    elif param is not None:
        assert f["params"][0] == param
    assert e.answer == f"{code:#x} {f['params'][0]:#x}"
    assert e.explanation.splitlines()[1].endswith(f"(0x{code:08X})")


@pytest.mark.parametrize("seed", SEEDS)
def test_check_accepts_the_answer_and_refuses_another(apps, seed):
    e = bugcheck.generate(None, seed)
    right, text = cli.verdict(e, e.answer)
    assert right and text.startswith(f"right: {e.answer}\n*** STOP")
    code, param = e.facts["code"], e.facts["params"][0]
    assert cli.verdict(e, f"{code}, {param}")[0]                     # decimal, a comma
    assert cli.verdict(e, f"{code:#x}({param:#x}, 0, 0, 0)")[0]      # as a blue screen says
    for wrong in (f"{code + 1:#x} {param:#x}", f"{code:#x} {param ^ 1:#x}"):
        right, text = cli.verdict(e, wrong)
        assert not right and text.startswith(f"wrong: you answered {wrong}; the machine says")
        assert e.explanation in text


def test_explanation_is_the_blue_screen_of_emu_run(apps):
    seed = next(s for s in SEEDS if bugcheck.generate(None, s).facts["driver"] == "crash.sys")
    e = bugcheck.generate(None, seed)
    run = emurun.emu("run", "--driver", str(apps.parent / "drivers" / "crash.sys"),
                     str(apps / "hello"), timeout=120)
    assert run.returncode == 126
    assert e.explanation in run.stderr


@pytest.mark.parametrize(("answer", "message"), [
    ("0x50", "give the code and the first parameter"), ("0x50 0x", "0x with no hex digits"),
    ("0x50 0x10000000000000000", "wider than 64 bits"), ("0x50 1 2", "two numbers"),
    ("0x100000000 0", "a stop code is 32 bits"), ("stop 1", "not a number")])
def test_malformed_answers(answer, message, capsys):
    assert cli.run(["check", "bugcheck", "--seed", "1", answer]) == 2
    err = capsys.readouterr().err
    assert err.startswith("emu: error: ") and err.count("\n") == 1 and message in err
