"""Watchpoints on the block counter: a watched access in the middle of a translated block
stops right after its instruction, in exactly the state the per-instruction counter (the
reference, ``EMU_COUNT=instruction``) stops in: the same position, every register, every
byte of RAM, the same description and hit counts, forward and going back."""

from __future__ import annotations

from pathlib import Path

import capstone
import pytest
from test_session import Script, recipe, state

from emu.debugger.session import Session, StopReason
from emu.hw import native
from emu.nt.loader import load_file

APPS = Path(__file__).resolve().parents[2] / "guest" / "build" / "apps"
HELLO = load_file(APPS / "hello")
# puts counts the characters it writes: `add qword [rip + ...], 1` (a read-modify-write)
# on console+0x18, the fourth instruction of a block that goes on after it.
CHARS_WRITTEN = HELLO.symbols["console"] + 0x18
DECODER = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)


def run(per_instruction: bool, actions, blocks: list | None = None) -> list:
    """The stops of a scripted session on `hello`, counted one way, after the first two
    actions (set the watchpoint, resume): for each, the stop's reason, position and
    description, every point's hit count, the watched counter, and the whole state; and in
    ``blocks``, the block counter's entries charged so far at each stop."""
    seen: list = []

    def record(s: Session):
        stop = sc.stops[-1][0]
        hits = {n: bp.hits for n, bp in s.breakpoints.items()}
        value = int.from_bytes(s.target.read_virtual(CHARS_WRITTEN, 8), "little")
        seen.append((stop.reason, stop.position, stop.description, hits, value, state(s)))
        if blocks is not None:
            blocks.append(s.executive.cpu.native.blocks)

    def then(action):
        def both(s: Session):
            record(s)
            return action(s)
        return both

    def last(s: Session):
        record(s)
        return False

    saved = native.PER_INSTRUCTION
    native.PER_INSTRUCTION = per_instruction
    try:
        sc = Script(recipe(("hello", [])), [*actions[:2], *map(then, actions[2:]), last])
        sc.run()
    finally:
        native.PER_INSTRUCTION = saved
    return seen


def watch(kind: str):
    def add(s: Session):
        s.add_watchpoint(CHARS_WRITTEN, 8, kind)
        return False          # stay at the first stop: the next action resumes
    return add


def cont(s: Session):
    s.cont()


def reverse_cont(s: Session):
    s.reverse_cont()


def accessing_instructions(description: str) -> list[capstone.CsInsn]:
    """The instruction a watchpoint's stop names ("... by the instruction at hello!f+0x..")
    and the one after it."""
    name, offset = description.rsplit(" at ", 1)[1].split("+")
    address = HELLO.symbols[name.split("!")[1]] + int(offset, 16)
    page = bytes(HELLO.pages[address & ~0xFFF])
    return list(DECODER.disasm(page[address & 0xFFF:], address, 2))


@pytest.mark.parametrize("kind", ["write", "read", "access"])
def test_a_watchpoint_inside_a_block_stops_as_the_per_instruction_counter_does(kind):
    actions = [watch(kind), cont, cont, cont, cont]
    blocks: list[int] = []
    by_block = run(False, actions, blocks)
    by_instruction = run(True, actions)
    assert [r for r, *_ in by_block] == [StopReason.WATCHPOINT] * 4
    assert by_block == by_instruction
    # With the watchpoint set, the block counter counted the way between the stops.
    assert all(a < b for a, b in zip(blocks, blocks[1:], strict=False))
    # Each access is in the middle of its block (no jump, call or return ends the block
    # there), and the stop is right after it. A write's first is puts' `add qword [rip +
    # ...], 1`, whose block goes on to `cmp rax, rsi; je ...`.
    for _, _, description, _, _, (registers, _) in by_block:
        insn, after = accessing_instructions(description)
        rip = registers[16]                      # state(): rax ... r15, then rip
        assert not insn.mnemonic.startswith(("j", "call", "ret")) and rip == after.address
    if kind == "write":
        insn, after = accessing_instructions(by_block[0][2])
        assert (insn.mnemonic, insn.op_str[-3:], after.mnemonic) == ("add", ", 1", "cmp")
    positions = [p for _, p, *_ in by_block]
    assert positions == sorted(set(positions))


def test_the_store_of_a_read_modify_write_lands_once():
    """The stop undoes the store that landed before it and runs the instruction again: the
    counter is 1 after the first `add ..., 1`, 2 after the second."""
    by_block = run(False, [watch("write"), cont, cont])
    (_, _, first, _, one, _), (_, _, _, _, two, _) = by_block[:2]
    assert (one, two) == (1, 2)
    assert "8-byte write of 0x403018 (value 0x1)" in first


def test_reverse_continue_returns_to_a_watchpoint_inside_a_block():
    """Going back finds the same stop, in the same state, as the forward run made."""
    actions = [watch("write"), cont, cont, cont, reverse_cont]
    by_block = run(False, actions)
    by_instruction = run(True, actions)
    assert by_block == by_instruction
    forward_second, back = by_block[1], by_block[3]
    assert back[0] is StopReason.WATCHPOINT
    assert (back[1], back[2], back[4], back[5]) == (forward_second[1], forward_second[2],
                                                    forward_second[4], forward_second[5])
