"""``dpc``: whose frame does this DPC's store land in (the tour's arbitrary-thread-context
scenario, emu.scenarios.context, played by the tour's own Act and Witness).

slowread asks slow<method>.sys to read into its page at 0x7F7'93950000 and victim has its own
page at the same address; the device interrupts while victim runs, so the DPC runs in
victim's address space (Microsoft, "Introduction to DPC Objects": an arbitrary thread's
context). The seed picks the I/O method (neither, direct, buffered) and which app starts
first. The answer is the owner the PFN database gives the frame of the DPC's data store
(emu.scenarios.watch.WriteWatch): with neither I/O the process current when the DPC ran,
with direct I/O the requester (the MDL's kernel mapping), with buffered I/O no process (the
system buffer is kernel pool).
"""

from __future__ import annotations

import functools
import random
import re

from emu.exercise import AnswerError, Exercise
from emu.exercise.answers import parse_number
from emu.exercise.scenes import SceneError, app_path

METHODS = ("neither", "direct", "buffered")
PAGE_VA = 0x7F7_93950000


@functools.cache
def played(method: str, victim_first: bool) -> dict:
    """Play the act once: the processes, the DPC's record, and the witness's narration."""
    from emu.scenarios.registry import all_scenarios
    from emu.scenarios.stage import ScenarioError, Stage

    app_path("slowread")
    scenario = {s.name: s for s in all_scenarios()}["arbitrary-thread-context"]
    stage = Stage(scenario, out=None)
    apps = [("slowread", f"\\Device\\Slow{method.capitalize()}"), ("victim",)]
    if victim_first:
        apps.reverse()
    try:
        with stage.act(f"slowread with slow{method}.sys", apps=apps,
                       drivers=[f"slow{method}.sys"], watch_dpc_writes=True) as act:
            act.run()
            dpcs = act.witness.dpcs
            procs = {p.name: p.pid for p in act.procs}
    except ScenarioError as err:
        raise SceneError(str(err)) from None
    if len(dpcs) != 1 or not dpcs[0].runs:
        raise SceneError(f"the DPC scene with slow{method}.sys saw no DPC store")
    return {"procs": procs, "dpc": dpcs[0], "lines": list(stage.result.lines)}


def generate(_scene, seed: int) -> Exercise:
    """The dpc exercise for ``seed`` (``_scene`` unused: each variant plays its own act)."""
    rng = random.Random(seed)
    method, victim_first = rng.choice(METHODS), rng.random() < 0.5
    play = played(method, victim_first)
    procs, dpc = play["procs"], play["dpc"]
    owners = {run.owner for run in dpc.runs}
    if len(owners) != 1:
        raise SceneError(f"the DPC's stores landed in several owners' frames: {owners}")
    owner = owners.pop()
    names = {pid: name for name, pid in procs.items()}
    interrupted = dpc.interrupted
    answer = "none" if owner is None else f"{owner} ({names.get(owner, '?')})"
    question = (
        f"slowread (pid {procs['slowread']}) reads 64 bytes from \\Device\\Slow"
        f"{method.capitalize()} (slow{method}.sys, {method} I/O) into its page at virtual "
        f"address 0x7f7'93950000; victim (pid {procs['victim']}) has its own page at the same "
        f"address. The driver's read routine starts the device and pends the IRP; the "
        f"device's interrupt arrives while pid {interrupted} "
        f"({names.get(interrupted, 'the idle system')}) runs, and the ISR queues the DPC "
        f"that stores the data.\nWhich process's frame does the DPC's data store land in? "
        f"Answer a pid (or the process's name), or `none` for a frame of no process "
        f"(kernel pool).")
    explanation = "\n".join(line for line in play["lines"] if "IRQL" in line or
                            "DbgPrint" in line)
    facts = {"method": method, "requester": procs["slowread"], "victim": procs["victim"],
             "interrupted": interrupted, "dpc_cr3": dpc.cr3, "owner": owner,
             "stores": [{"va": r.va, "pa": r.pa, "bytes": len(r.data), "owner": r.owner}
                        for r in dpc.runs]}
    return Exercise("dpc", seed, question, answer, explanation, facts)


def parse(text: str) -> int | str | None:
    """An answer: a pid (number), ``none``, or a process name (``victim``, ``slowread``)."""
    word = text.strip()
    if not word:
        raise AnswerError("empty answer")
    if word.lower() in ("none", "kernel", "no process"):
        return None
    if word[0].isdigit():
        return parse_number(word.split()[0] if re.fullmatch(r"\d\w*\s*\(.*\)", word)
                            else word, "pid")
    if word.lower() in ("victim", "slowread"):
        return word.lower()
    raise AnswerError(f"answer {word!r}: a pid, a process name (victim, slowread) or none")


def check(exercise: Exercise, text: str) -> bool:
    """True if ``text`` names the owner of the DPC's frame; AnswerError if malformed."""
    given = parse(text)
    f = exercise.facts
    if isinstance(given, str):
        given = f["victim"] if given == "victim" else f["requester"]
    return given == f["owner"]
