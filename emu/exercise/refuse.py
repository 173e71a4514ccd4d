"""``refuse``: which entries and bits refuse this ring-3 access, and what change allows it
(Intel SDM Vol. 3A §4.6: U/S and R/W must be 1 at every level, XD must be 0 at every level
when EFER.NXE = 1).

The seed picks, in the address-space scene, a ring-3 access that the walker refuses with a
protection fault (P=1 everywhere): a kernel page (U/S), a read-only page written (R/W), a
no-execute page fetched (XD). The changes are the walker's: the entry and bit it names
(PageFault.level and reason), then the walk again with that change applied, until it passes.
Every change found this way is needed (a right must hold at every level), and together they
suffice. SMEP and SMAP restrict ring 0 only, so no ring-3 exercise involves them; clearing
EFER.NXE is no way out (XD then becomes a reserved bit: #PF with RSVD=1).
"""

from __future__ import annotations

import random
import re

from emu.debugger import walkview
from emu.exercise import AnswerError, Exercise
from emu.exercise.scenes import Scene
from emu.exercise.translate import KERNEL_PAGES, live_processes, table_lines, user_pages
from emu.hw import mmu
from emu.hw.mmu import PTE

# The walker's reason -> the bit, and the value that allows the access (SDM Vol. 3A §4.6).
_BITS = {"U/S=0": ("US", PTE.US, 1), "R/W=0": ("RW", PTE.RW, 1), "NX=1": ("NX", PTE.NX, 0)}
_LEVEL = {name: level for level, name in mmu.LEVEL_NAMES.items()}
_BIT_WORDS = {"US": "US", "U/S": "US", "RW": "RW", "R/W": "RW", "NX": "NX", "XD": "NX"}
_CHANGE = re.compile(r"\s*(PML4E|PDPTE|PDE|PTE)\s*[.:]?\s*(U/S|US|R/W|RW|NX|XD)\s*=\s*"
                     r"(0x[0-9a-f]*|\d+)\s*,?", re.IGNORECASE)
_pools: dict[int, list] = {}


class _Patched:
    """Guest RAM with some 8-byte entries replaced: the walker walks it as it walks RAM."""

    def __init__(self, mem: mmu.Memory, patches: dict[int, int]) -> None:
        self.mem, self.patches = mem, patches

    def read(self, pa: int, n: int) -> bytes:
        if n == 8 and pa in self.patches:
            return self.patches[pa].to_bytes(8, "little")
        return self.mem.read(pa, n)

    def write(self, pa: int, data: bytes) -> None:     # never called: no A/D is set
        raise AssertionError("a question never writes the machine's memory")


def _walk(scene: Scene, mem, pid: int, va: int, access: str) -> mmu.Translation:
    """The ring-3 walk the debugger's ``walk`` does, over ``mem``."""
    regs = scene.target.registers()
    return mmu.walk(mem, va, access, cr3=scene.target.cr3_for(va, pid), cpl=3,
                    cr0=regs["cr0"], cr4=regs["cr4"], efer=regs["efer"], rflags=regs["rflags"])


def changes(scene: Scene, pid: int, va: int, access: str) -> tuple[list[tuple], int]:
    """([(entry name, bit name, value, entry address), ...] in the order the walker finds
    them, the physical address the access reaches once all are made)."""
    mem = scene.target.memory()
    patches: dict[int, int] = {}
    found = []
    while True:
        try:
            return found, _walk(scene, _Patched(mem, patches), pid, va, access).pa
        except mmu.PageFault as fault:
            step = next(s for s in fault.steps if s.level == fault.level)
            bit_name, bit, value = _BITS[fault.reason.split(" ", 1)[0]]
            old = patches.get(step.entry_address, step.value)
            patches[step.entry_address] = old | int(bit) if value else old & ~int(bit)
            found.append((step.name, bit_name, value, step.entry_address))


def pool(scene: Scene) -> list[tuple]:
    """Every (process, page, access) of the scene the walker refuses at ring 3 with a
    protection fault, in a fixed order."""
    key = id(scene)
    if key not in _pools:
        found = []
        for proc in live_processes(scene):
            committed, _ = user_pages(proc)
            for page in (*committed, *KERNEL_PAGES):
                for access in ("read", "write", "fetch"):
                    try:
                        _walk(scene, scene.target.memory(), proc.pid, page, access)
                    except mmu.PageFault as fault:
                        if fault.error_code & mmu.PFErr.P and \
                                not fault.error_code & mmu.PFErr.RSVD:
                            found.append((proc, page, access))
        _pools[key] = found
    return _pools[key]


def answer_text(found: list[tuple]) -> str:
    """``PTE.RW=1`` or ``PML4E.US=1 PDPTE.US=1 ...``: the changes, in walk order."""
    return " ".join(f"{entry}.{bit}={value}" for entry, bit, value, _ in found)


def generate(scene: Scene, seed: int) -> Exercise:
    """The refuse exercise for ``seed``."""
    rng = random.Random(seed)
    candidates = pool(scene)
    # Pick the kind of refusal first, so that R/W and XD are not drowned by kernel pages.
    by_bit: dict[str, list] = {}
    for proc, page, access in candidates:
        by_bit.setdefault("US" if page >= 1 << 47 else
                          ("RW" if access == "write" else "NX"), []).append((proc, page, access))
    kinds = sorted(by_bit)
    proc, page, access = rng.choice(by_bit[rng.choice(kinds)])
    va = page | rng.randrange(mmu.PAGE_SIZE)
    found, pa = changes(scene, proc.pid, va, access)
    verb = {"read": "reads", "write": "writes", "fetch": "fetches an instruction from"}[access]
    lines = [f'Process {proc.pid} "{proc.name}" is stopped after {scene.stop} instructions. '
             f"Code at ring 3 {verb} virtual address {va:#x}, and the MMU refuses it "
             f"(CR3 = {scene.target.cr3_for(va, proc.pid):#x}, EFER.NXE = 1).",
             "Page-table entries near the walk (physical address: value):",
             *table_lines(scene, proc.pid, va),
             "Which entries and which bits refuse it, and what change would allow it? Answer "
             "every change that is needed, as ENTRY.BIT=VALUE (ENTRY: PML4E, PDPTE, PDE or "
             "PTE; BIT: US, RW or NX), separated by spaces."]
    explain = [walkview.walk_text(scene.target, va, proc.pid, access, 3),
               "The changes, each found by walking again with the ones before it made:"]
    for entry, bit, value, ea in found:
        explain.append(f"  {entry} at {ea:#x}: set {bit} to {value}")
    explain.append(f"  with every change made, the ring-3 {access} reaches physical address "
                   f"{pa:#x}")
    facts = {"pid": proc.pid, "process": proc.name, "va": va, "access": access, "ring": 3,
             "cr3": scene.target.cr3_for(va, proc.pid),
             "changes": [{"entry": e, "bit": b, "value": v, "entry_address": a}
                         for e, b, v, a in found], "pa_after": pa}
    return Exercise("refuse", seed, "\n".join(lines), answer_text(found),
                    "\n".join(explain), facts)


def parse(text: str) -> set[tuple[str, str, int]]:
    """An answer: changes ``ENTRY.BIT=VALUE`` (``.`` or a space between entry and bit;
    spaces or commas between changes), as a set of (entry, bit, value)."""
    words = text.strip()
    if not words:
        raise AnswerError("empty answer")
    out, at = set(), 0
    while at < len(words):
        found = _CHANGE.match(words, at)
        if not found:
            raise AnswerError(f"answer {words!r}: expected ENTRY.BIT=VALUE at "
                              f"{words[at:].strip()!r} (ENTRY: PML4E, PDPTE, PDE, PTE; BIT: "
                              "US, RW, NX; VALUE: 0 or 1)")
        from emu.exercise.answers import parse_number
        value = parse_number(found.group(3), "bit value")
        if value > 1:
            raise AnswerError(f"answer {words!r}: a bit is 0 or 1, not {found.group(3)}")
        out.add((found.group(1).upper(), _BIT_WORDS[found.group(2).upper()], value))
        at = found.end()
    return out


def check(exercise: Exercise, text: str) -> bool:
    """True if ``text`` names exactly the machine's changes; AnswerError if malformed."""
    expected = {(c["entry"], c["bit"], c["value"]) for c in exercise.facts["changes"]}
    return parse(text) == expected
