"""``evict``: which page does the clock evict next (docs/paging.md, "Trimming"; Windows
Internals, 7th ed., ch. 5, "Working sets").

Two ``pattern`` apps touch 4 MiB each in 2 MiB of RAM, so the memory manager trims all the
time. The machine runs once; every call of its trimmer (emu.nt.mm.paging.Pager.trim) is
recorded as it starts (the working sets in the order the trimmer will visit them, each
clock from its hand, with every PTE's Accessed bit) and the pages its own _trim_page then
takes out. The seed picks one trim that evicts something; the answer is the first page
that trim took, as the pager took it, and the PTE that page has once the trim is over.
"""

from __future__ import annotations

import functools
import random
import re

from emu.exercise import AnswerError, Exercise
from emu.exercise.answers import parse_number
from emu.exercise.scenes import app_path
from emu.hw.mmu import PTE
from emu.nt.mm import softpte
from emu.nt.mm.paging import TRIM_STEPS

MEM = "2M"
APPS = (("pattern", ("4", "1")), ("pattern", ("4", "2")))
SHOWN_AFTER = 3          # pages of the clock shown past the answer


@functools.cache
def played() -> dict:
    """Run the scene once: every trim that took a page, as it started and what it took."""
    from emu.machine import Machine

    machine = Machine(MEM)
    try:
        procs = [machine.spawn(app_path(name), list(args)) for name, args in APPS]
        pager = machine.executive.mm.pager
        mem = machine.mem
        trims: list[dict] = []
        run_trim, trim_page = pager.trim, pager._trim_page
        pid_of = {id(p.space): p.pid for p in procs}

        def trim(wanted: int) -> int:
            sets = pager.working_sets
            order = [sets[(pager._turn + i) % len(sets)] for i in range(len(sets))]
            clocks = []
            for ws in order:
                pages = []
                for n, (va, pte_pa) in enumerate(ws.pages.items()):
                    if n == TRIM_STEPS:
                        break
                    pte = mem.read_u64(pte_pa)
                    pfn = (pte & 0x000F_FFFF_FFFF_F000) >> 12
                    locked = bool(pte & PTE.P) and machine.executive.mm.pfn.entries[pfn].locks
                    pages.append((va, int(bool(pte & PTE.A)), bool(locked)))
                clocks.append((pid_of.get(id(ws.space)), ws.name, len(ws.pages), pages))
            record = {"wanted": wanted, "clocks": clocks, "taken": []}
            trims.append(record)
            done = run_trim(wanted)
            record["pte_after"] = [mem.read_u64(pte_pa) for _, _, pte_pa in record["taken"]]
            return done

        def take(ws, va, pte_pa, pte, pfn):
            trims[-1]["taken"].append((pid_of.get(id(ws.space)), va, pte_pa))
            return trim_page(ws, va, pte_pa, pte, pfn)

        pager.trim, pager._trim_page = trim, take
        machine.run()
        pids = [p.pid for p in procs]
    finally:
        machine.close()
    return {"trims": [t for t in trims if t["taken"]], "pids": pids}


def generate(_scene, seed: int) -> Exercise:
    """The evict exercise for ``seed``."""
    rng = random.Random(seed)
    play = played()
    # Three times in four, a trim whose hand gives second chances before it takes a page
    # (most trims of a sweep take the page at the hand: a dull question).
    chances = [i for i, t in enumerate(play["trims"]) if _second_chances(t)]
    number = rng.choice(chances) if chances and rng.random() < 0.75 else \
        rng.randrange(len(play["trims"]))
    t = play["trims"][number]
    pid, va, pte_pa = t["taken"][0]
    apps = " and ".join(f"pattern {' '.join(args)} (pid {p})"
                        for (_, args), p in zip(APPS, play["pids"], strict=True))
    lines = [f"{apps} each touch 4 MiB in {MEM} of RAM. Free and standby frames have run low "
             f"and the trimmer starts (trim number {number + 1} of the run, counting those that "
             f"take pages; it wants {t['wanted']}). It visits the working sets in this order, "
             f"moving each clock hand up to {TRIM_STEPS} pages; each clock from its hand, "
             "with the PTE's Accessed bit (locked: an MDL holds the page):"]
    found = False
    for owner, name, size, pages in t["clocks"]:
        lines.append(f"  working set of pid {owner} ({name}), {size} pages:"
                     if owner is not None else f"  working set {name}, {size} pages:")
        shown = 0
        for page, accessed, locked in pages:
            lines.append(f"    {page:#x} A={accessed}{' locked' if locked else ''}")
            if found:
                shown += 1
                if shown == SHOWN_AFTER:
                    break
            found |= owner == pid and page == va
        if found:
            lines.append("    ...")
            break
    lines.append("Which page does the clock evict first? Answer PID VA: the process and the "
                 "page's virtual address (e.g. 12 0x7ffffffa4000).")
    pte = t["pte_after"][0]
    state = softpte.decode(pte)
    explanation = "\n".join([
        "The trimmer's hand (emu.nt.mm.paging, Pager._run_hand): a page whose PTE has A = 1 "
        "gets A cleared and goes to the back of its clock (a second chance); the first page "
        "met with A = 0 (and not locked) is trimmed.",
        f"This trim took {len(t['taken'])} page(s), first {va:#x} of pid {pid}: " +
        ", ".join(f"{v:#x} (pid {p})" for p, v, _ in t["taken"][:8]) +
        (" ..." if len(t["taken"]) > 8 else ""),
        f"Its PTE at {pte_pa:#x} is now {pte:#018x}: {state.describe()}"])
    facts = {"trim": number + 1, "pid": pid, "va": va, "pte_address": pte_pa,
             "pte_after": pte, "taken": [{"pid": p, "va": v} for p, v, _ in t["taken"]]}
    return Exercise("evict", seed, "\n".join(lines), f"{pid} {va:#x}", explanation, facts)


def _second_chances(trim: dict) -> int:
    """How many pages the hand passes (A = 1, or locked) before the first it takes."""
    pid, va, _ = trim["taken"][0]
    passed = 0
    for owner, _, _, pages in trim["clocks"]:
        for page, _, _ in pages:
            if owner == pid and page == va:
                return passed
            passed += 1
    return passed


def parse(text: str) -> tuple[int, int]:
    """An answer: ``PID VA`` (also ``pid PID VA``; a comma may separate them)."""
    words = [w for w in re.split(r"[\s,]+", text.strip()) if w]
    if words[:1] and words[0].lower() == "pid":
        words = words[1:]
    if len(words) != 2:
        raise AnswerError(f"answer {text.strip()!r}: give the process and the page, PID VA "
                          "(e.g. 12 0x7ffffffa4000)")
    return parse_number(words[0], "pid"), parse_number(words[1], "virtual address") & ~0xFFF


def check(exercise: Exercise, text: str) -> bool:
    """True if ``text`` names the page the trim took first; AnswerError if malformed."""
    return parse(text) == (exercise.facts["pid"], exercise.facts["va"])
