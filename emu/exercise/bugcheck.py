"""``bugcheck``: predict the bug check code and its first parameter of a driver with a bug
(the seeded-bug drivers of guest/drivers-pe, docs/drivers.md; Microsoft's "Bug check code
reference" gives each code's parameters).

The seed picks one driver (and the app that drives it); the machine boots with it and runs
until the bug check. The question gives what a reader sees before the blue screen (the
driver's DbgPrint lines, the apps' console output); the answer is the BugCheck the
executive raised, the explanation its blue screen (emu.nt.bugcheck.blue_screen).
"""

from __future__ import annotations

import functools
import random
import re

from emu.exercise import AnswerError, Exercise
from emu.exercise.answers import parse_number
from emu.exercise.scenes import GUEST_BUILD, SceneError, app_path
from emu.nt.bugcheck import blue_screen

# (driver, [(app, args)...]): each stops the machine with a bug check (docs/drivers.md,
# guest/README.md say which).
DRIVERS = (
    ("crash.sys", [("hello", [])]),
    ("bugcheck.sys", [("hello", [])]),
    ("rowrite.sys", [("hello", [])]),
    ("twice.sys", [("devread", ["\\Device\\Twice"])]),
    ("nxpool.sys", [("hello", [])]),
    ("smep.sys", [("devread", ["\\Device\\Smep", "16", "0x401000"])]),
    ("pagedpool.sys", [("pagedrv", ["dispatch"])]),
    ("peirqlpage.sys", [("pagedrv", ["user-dispatch"])]),
    ("pepooltwice.sys", [("hello", [])]),
    ("pepooltag.sys", [("hello", [])]),
    ("pepoolbad.sys", [("hello", [])]),
    ("pepoolraise.sys", [("hello", [])]),
    ("pemdltwice.sys", [("hello", [])]),
    ("pemdlbad.sys", [("hello", [])]),
    ("pemdlleak.sys", [("devread", ["\\Device\\PeLeak"])]),
    ("peirqlraise.sys", [("hello", [])]),
    ("peirqlspin.sys", [("hello", [])]),
    ("peirqlleak.sys", [("devread", ["\\??\\PeIrqlLeak"])]),
    ("peirqlgp.sys", [("hello", [])]),
    ("peretentry.sys", [("hello", [])]),
    ("pederef.sys", [("hello", [])]),
    ("pewaitmany.sys", [("hello", [])]),
    ("pefastfail.sys", [("hello", [])]),
    ("petime.sys", [("hello", [])]),
    ("pebadevent.sys", [("hello", [])]),
    ("pesehentry.sys", [("hello", [])]),
    ("pertlbad.sys", [("hello", [])]),
    ("pecrash.sys", [("hello", [])]),
)


@functools.cache
def played(index: int) -> dict:
    """Boot with DRIVERS[index] and its apps, run to the bug check: what was seen, and it."""
    from emu.machine import Machine

    name, apps = DRIVERS[index]
    driver = GUEST_BUILD / "drivers" / name
    if not driver.is_file():
        raise SceneError(f"{driver}: the guests are not built (run: make -C guest)")
    machine = Machine("64M")
    try:
        machine.add_driver(driver)
        for app, args in apps:
            machine.spawn(app_path(app), list(args))
        result = machine.run()
        procs = [(p.name, bytes(p.output).decode(errors="replace")) for p in result.processes]
        debug = bytes(machine.executive.debug_output).decode(errors="replace")
    finally:
        machine.close()
    if result.bugcheck is None:
        raise SceneError(f"{name} did not bug-check the machine ({result.stopped})")
    return {"bugcheck": result.bugcheck, "debug": debug, "consoles": procs}


def generate(_scene, seed: int) -> Exercise:
    """The bugcheck exercise for ``seed`` (``_scene`` unused: each driver plays its own run)."""
    rng = random.Random(seed)
    index = rng.randrange(len(DRIVERS))
    name, apps = DRIVERS[index]
    play = played(index)
    bc = play["bugcheck"]
    run = " and ".join(" ".join([app, *(f"'{a}'" if "\\" in a else a for a in args)])
                       for app, args in apps)
    lines = [f"The driver {name} (guest/drivers-pe/{name[:-4]}.c) is loaded at boot, then "
             f"{run} runs. Before the machine stops, the driver prints (DbgPrint):"]
    lines += [f"  {line}" for line in play["debug"].splitlines()] or ["  (nothing)"]
    for proc, text in play["consoles"]:
        if text.strip():
            lines.append(f"and {proc} prints:")
            lines += [f"  {line}" for line in text.splitlines()]
    lines.append("Predict the bug check: its code and its first parameter. Answer CODE PARAM1, "
                 "two numbers (e.g. 0x50 0xffff900000000000).")
    facts = {"driver": name, "apps": [[app, *args] for app, args in apps], "code": bc.code,
             "name": bc.name, "params": list(bc.params)}
    return Exercise("bugcheck", seed, "\n".join(lines), f"{bc.code:#x} {bc.params[0]:#x}",
                    blue_screen(bc), facts)


def parse(text: str) -> tuple[int, int]:
    """An answer: the code and parameter 1, numbers separated by spaces or a comma (also
    ``0x50(0xffff900000000000, ...)``: only the first parameter counts)."""
    words = [w for w in re.split(r"[\s,()]+", text.strip()) if w]
    if len(words) < 2:
        raise AnswerError(f"answer {text.strip()!r}: give the code and the first parameter, "
                          "two numbers (e.g. 0x50 0xffff900000000000)")
    if len(words) > 2 and not re.search(r"\(", text):
        raise AnswerError(f"answer {text.strip()!r}: two numbers, the code and parameter 1")
    code, param = parse_number(words[0], "bug check code"), parse_number(words[1], "parameter 1")
    if code >= 1 << 32:
        raise AnswerError(f"bug check code {words[0]!r}: a stop code is 32 bits")
    return code, param


def check(exercise: Exercise, text: str) -> bool:
    """True if ``text`` gives the machine's code and first parameter; AnswerError if malformed."""
    return parse(text) == (exercise.facts["code"], exercise.facts["params"][0])
