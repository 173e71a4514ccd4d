"""``translate``: where does this access land: a physical address, #PF with its error code,
or #GP (Intel SDM Vol. 3A §4.5-§4.7; §3.3.7.1 for non-canonical addresses).

The seed picks a live process of the address-space scene, an address (a committed page of
one of its VADs, a reserved or free user page, a kernel page, or a non-canonical address),
an offset, an access and a ring (ring 3 three times in four). The answer is emu.hw.mmu.walk
on the machine's own tables, read without setting A/D (a question changes nothing); the
explanation is the debugger's ``walk`` text for the same access.
"""

from __future__ import annotations

import random
import re

from emu.debugger import walkview
from emu.exercise import AnswerError, Exercise
from emu.exercise.answers import error_code_names, parse_error_code, parse_number
from emu.exercise.scenes import Scene
from emu.hw import mmu
from emu.nt import layout
from emu.nt.mm.vad import MemState
from emu.nt.process import ProcessState

PAGE = layout.PAGE_SIZE
# Kernel pages every address space shares (emu.nt.layout): mapped ones and the never-mapped
# page of the kernel exports.
KERNEL_PAGES = (layout.KERNEL_GDT, layout.KERNEL_TEXT, layout.KERNEL_PCR,
                layout.KERNEL_STACK_BASE + PAGE, layout.KERNEL_EXPORTS, layout.KERNEL_POOL,
                layout.KI_USER_SHARED_DATA, layout.KERNEL_DRIVERS)
# Not canonical: bits 63..47 differ (SDM Vol. 1 §3.3.7.1).
NONCANONICAL = (0x0000_8000_0000_0000, 0xFFFF_7FFF_FFFF_F000, 0x1234_5678_9ABC_D000)
FREE_USER = (0x0, layout.MM_LOWEST_USER_ADDRESS, 0x0000_1000_0000_0000)
ACCESSES = ("read",) * 5 + ("write",) * 3 + ("fetch",) * 2


def live_processes(scene: Scene) -> list:
    """The scene's processes that still have an address space, by pid."""
    return sorted((p for p in scene.machine.processes
                   if p.state is not ProcessState.TERMINATED and p.vads is not None),
                  key=lambda p: p.pid)


def user_pages(proc) -> tuple[list[int], list[int]]:
    """(committed pages, reserved or free pages) of ``proc``'s user half, from its VADs."""
    committed, other = [], list(FREE_USER)
    for vad in proc.vads:
        for run in vad.runs:
            if run.state == MemState.MEM_COMMIT:
                committed += range(run.start, run.end, PAGE)
            else:
                other += sorted({run.start, run.end - PAGE})
        if vad.end <= layout.MM_HIGHEST_USER_ADDRESS and proc.vads.find(vad.end) is None:
            other.append(vad.end)                 # the free page just past the allocation
    return committed, other


def pick(scene: Scene, rng: random.Random) -> tuple[object, int, str, int]:
    """(process, address, access, ring) for one seed."""
    proc = rng.choice(live_processes(scene))
    committed, other = user_pages(proc)
    roll = rng.random()
    if roll < 0.5:
        page = rng.choice(committed)
    elif roll < 0.7:
        page = rng.choice(other)
    elif roll < 0.95:
        page = rng.choice(KERNEL_PAGES)
    else:
        page = rng.choice(NONCANONICAL)
    va = page | rng.randrange(PAGE)
    access = rng.choice(ACCESSES)
    ring = 0 if rng.random() < 0.25 else 3
    return proc, va, access, ring


def outcome(scene: Scene, pid: int, va: int, access: str, ring: int) -> dict:
    """What the walker says: {"pa": N}, {"fault": "#PF", "error_code": N} or {"fault": "#GP"}
    (the same call, registers and tables the debugger's ``walk`` uses)."""
    target = scene.target
    try:
        tr = target.walk(va, pid, access, ring, rflags=target.registers()["rflags"])
    except mmu.GeneralProtection:
        return {"fault": "#GP"}
    except mmu.PageFault as fault:
        return {"fault": "#PF", "error_code": int(fault.error_code)}
    return {"pa": tr.pa}


def answer_text(result: dict) -> str:
    """The canonical answer: ``0x1f123``, ``#PF 0x7 (P|W|U)`` or ``#GP``."""
    if "pa" in result:
        return f"{result['pa']:#x}"
    if result["fault"] == "#GP":
        return "#GP"
    code = result["error_code"]
    return f"#PF {code:#x} ({error_code_names(code)})"


def table_lines(scene: Scene, pid: int, va: int) -> list[str]:
    """The entries around the walk of ``va`` (each table's entries at index - 1 .. + 1),
    sorted by physical address: the reader finds the ones the walk reads."""
    target = scene.target
    if not mmu.is_canonical(va):
        return []
    try:
        steps = target.walk(va, pid, "read", 0, rflags=mmu.RFLAGS_AC).steps
    except mmu.PageFault as fault:
        steps = fault.steps
    mem = target.memory()
    shown = set()
    for step in steps:
        table = step.entry_address & ~(PAGE - 1)
        for index in (step.index - 1, step.index, step.index + 1):
            if 0 <= index < 512:
                shown.add(table + index * 8)
    return [f"  [{ea:#x}] = {int.from_bytes(mem.read(ea, 8), 'little'):#018x}"
            for ea in sorted(shown)]


def generate(scene: Scene, seed: int) -> Exercise:
    """The translate exercise for ``seed``."""
    rng = random.Random(seed)
    proc, va, access, ring = pick(scene, rng)
    regs = scene.target.registers()
    result = outcome(scene, proc.pid, va, access, ring)
    cr3 = scene.target.cr3_for(va, proc.pid)
    verb = {"read": "reads", "write": "writes", "fetch": "fetches an instruction from"}[access]
    lines = [
        f'Process {proc.pid} "{proc.name}" is stopped after {scene.stop} instructions. '
        f"Code at ring {ring} in its address space {verb} virtual address {va:#x}.",
        f"CR3 = {cr3:#x}, CR0.WP = {int(bool(regs['cr0'] & mmu.CR0.WP))}, "
        f"CR4.SMEP = {int(bool(regs['cr4'] & mmu.CR4.SMEP))}, "
        f"CR4.SMAP = {int(bool(regs['cr4'] & mmu.CR4.SMAP))}, "
        f"EFER.NXE = {int(bool(regs['efer'] & mmu.EFER.NXE))}, "
        f"RFLAGS.AC = {int(bool(regs['rflags'] & mmu.RFLAGS_AC))}.",
    ]
    tables = table_lines(scene, proc.pid, va)
    if tables:
        lines.append("Page-table entries near the walk (physical address: value):")
        lines += tables
    lines.append("What does the access reach? Answer the physical address, or #PF with the "
                 "error code the CPU pushes (a number or bit names: P|W|U|RSVD|ID), or #GP.")
    explanation = walkview.walk_text(scene.target, va, proc.pid, access, ring)
    facts = {"pid": proc.pid, "process": proc.name, "va": va, "access": access, "ring": ring,
             "cr3": cr3, **result}
    return Exercise("translate", seed, "\n".join(lines), answer_text(result), explanation,
                    facts)


def parse(text: str) -> dict:
    """An answer: a physical address, ``#PF CODE`` (also ``PF CODE``, ``fault CODE``) or
    ``#GP`` (also ``#GP(0)``, ``GP``), as {"pa": N} / {"fault": ...} like ``outcome``."""
    words = text.strip()
    if not words:
        raise AnswerError("empty answer")
    if re.fullmatch(r"#?gp(\(0\))?", words, re.IGNORECASE):
        return {"fault": "#GP"}
    found = re.fullmatch(r"(?:#?pf|fault)\s*(.*)", words, re.IGNORECASE | re.DOTALL)
    if found:
        return {"fault": "#PF", "error_code": parse_error_code(found.group(1))}
    return {"pa": parse_number(words, "physical address")}


def check(exercise: Exercise, text: str) -> bool:
    """True if ``text`` (the answer grammar) is the machine's answer; AnswerError if malformed."""
    given = parse(text)
    expected = {k: exercise.facts[k] for k in ("pa", "fault", "error_code")
                if k in exercise.facts}
    return given == expected
