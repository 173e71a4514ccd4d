"""Debugger expressions: numbers, operators, registers, symbols and memory reads."""

from __future__ import annotations

import pytest
from state_harness import MARKERS, pid_of, two_processes

from emu.debugger.expr import ExprError, evaluate, tokenize
from emu.debugger.target import LiveTarget, TargetError

MASK = (1 << 64) - 1


@pytest.mark.parametrize("text, value", [
    ("42", 42), ("0x2a", 42), ("0X2A", 42), ("007", 7),
    ("0x7f7`93950000", 0x7F7_93950000), ("0x7f7'93950000", 0x7F7_93950000),
    ("1 + 2 * 3", 7), ("(1 + 2) * 3", 9), ("10 - 4 - 3", 3), ("100 / 7 / 2", 7),
    ("17 % 5", 2), ("1 << 4 + 1", 32), ("0xff >> 4", 0xF), ("6 & 3", 2), ("6 | 3", 7),
    ("6 ^ 3", 5), ("1 | 2 ^ 3 & 4", 3), ("-1", MASK), ("~0", MASK), ("!0", 1), ("!7", 0),
    ("--5", 5), ("+5", 5), ("0 - 1", MASK), ("1 << 64", 0), ("1 << 63", 1 << 63),
    ("0xffffffffffffffff + 2", 1), ("3 == 3", 1), ("3 != 3", 0), ("2 < 3", 1),
    ("3 <= 3", 1), ("4 > 5", 0), ("5 >= 5", 1), ("-1 > 0", 1),
    ("1 && 2", 1), ("1 && 0", 0), ("0 || 0", 0), ("0 || 3", 1), ("1 == 1 && 2 != 3", 1),
    ("1 + 1 == 2", 1), ("2 & 3 == 3", 0),
])
def test_numbers_and_operators_as_in_c_on_64_bits(text, value):
    assert evaluate(text) == value


@pytest.mark.parametrize("text, message", [
    ("", "empty expression"),
    ("   ", "empty expression"),
    ("1 +", "expected a number, register, symbol or '\\(' at the end"),
    ("(1 + 2", "expected '\\)' at the end"),
    ("[8", "expected '\\]' at the end"),
    ("1 2", "expected an operator at '2' \\(column 3\\)"),
    ("1 @ 2", "unexpected character '@' at column 3"),
    ("1 / 0", "division by zero"),
    ("18446744073709551616", "numeric constant too large: 18446744073709551616 \\(more than "
     "64 bits\\)"),                               # was 0: a length or count silently wrapped
    ("0x1`00000000`00000001 + 1", "numeric constant too large"),
    ("5 % (2 - 2)", "division by zero"),
    ("rax", "'rax' needs a machine"),
])
def test_bad_expressions_are_one_line_errors(text, message):
    with pytest.raises(ExprError, match=message) as err:
        evaluate(text)
    assert "\n" not in str(err.value)


def test_module_qualified_names_and_not_equal_are_told_apart():
    kinds = [(t.kind, t.text) for t in tokenize("echo.sys!Read != a!b")][:-1]
    assert kinds == [("qualified", "echo.sys!Read"), ("op", "!="), ("qualified", "a!b")]
    assert [t.text for t in tokenize("!x")][:2] == ["!", "x"]


class FakeTarget:
    """Just what evaluate asks of a Target."""

    def __init__(self) -> None:
        self.regs = {"rax": 0x1234, "rsp": 0x1000}
        self.memory = {0x1000: 0xDEAD, 0x1008: 0x1000}
        self.reads: list[int] = []

    def register_names(self) -> list[str]:
        return ["rax", "rsp", "eax"]

    def register(self, name: str, pid=None) -> int:
        name = name.lower()
        if name == "eax":
            return self.regs["rax"] & 0xFFFF_FFFF
        if name not in self.regs:
            raise TargetError(f"no register '{name}'")
        return self.regs[name]

    def resolve_symbol(self, name: str, pid=None) -> int:
        if name in ("main", "app!main"):
            return 0x401000
        raise TargetError(f"no symbol '{name}' (did you mean 'main'?)")

    def read_u64(self, address: int, pid=None) -> int:
        self.reads.append(address)
        if address not in self.memory:
            raise TargetError(f"{address:#x}: not mapped: the PDE (level 2) is not present")
        return self.memory[address]


def test_registers_symbols_and_memory():
    t = FakeTarget()
    assert evaluate("rax", t) == evaluate("$rax", t) == evaluate("RAX", t) == 0x1234
    assert evaluate("eax + 1", t) == 0x1235
    assert evaluate("main + 0x10", t) == evaluate("app!main + 16", t) == 0x401010
    assert evaluate("[rsp]", t) == evaluate("poi(rsp)", t) == 0xDEAD
    assert evaluate("[[rsp + 8]]", t) == 0xDEAD
    with pytest.raises(ExprError, match=r"no symbol 'mian' \(did you mean 'main'\?\)"):
        evaluate("mian", t)
    with pytest.raises(ExprError, match=r"cannot read \[0x8\]: 0x8: not mapped: the PDE"):
        evaluate("[8]", t)


def test_and_or_skip_the_memory_their_right_side_would_read():
    t = FakeTarget()
    assert evaluate("0 && [8] == 1", t) == 0
    assert evaluate("1 || [8]", t) == 1
    assert evaluate("0 && 1 / 0", t) == 0
    assert 8 not in t.reads
    with pytest.raises(ExprError, match="no symbol 'nosuch'"):
        evaluate("0 && nosuch", t)            # names are still checked


def test_on_a_real_machine_per_process():
    m = two_processes()
    t = LiveTarget(m)
    notepad = pid_of(m, "notepad")
    assert evaluate("main", t, notepad) == m.processes[0].image.symbols["main"]
    # "notepad page 0" starts with the bytes of 'note' in little-endian order.
    word = int.from_bytes(b"notepad ", "little")
    assert evaluate(f"poi({MARKERS:#x})", t, notepad) == word
    assert evaluate("rip", t) == m.executive.cpu.rip
    assert evaluate("cr3 & 0xfff", t) == 0
    m.close()
