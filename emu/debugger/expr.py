"""Debugger expressions: ``rip+5``, ``hello!main``, ``[rsp+8]``, ``rax == 0 && rbx != 0``.

A small hand-written parser (never Python's eval). Values are 64-bit unsigned and wrap
like the CPU's arithmetic; comparisons and logic give 1 or 0. Precedence, lowest first
(as in C):

    ||   &&   |   ^   &   == !=   < <= > >=   << >>   + -   * / %   unary - ~ !

Operands: numbers (``0x1f``, ``31``, WinDbg's ``0x7f7`93950000`` and emu's own
``0x7f7'93950000``), registers with or without ``$`` (``rax``, ``$eax``, ``cr3``),
symbols (``main``, ``hello!main``, ``echo.sys!DispatchRead``), ``(expr)``, and a u64
read from virtual memory, ``[expr]`` or ``poi(expr)`` as in WinDbg.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from emu.debugger.records import TargetError

if TYPE_CHECKING:
    from emu.debugger.targetbase import Target

MASK = (1 << 64) - 1

_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<number>0[xX][0-9a-fA-F][0-9a-fA-F`']*|[0-9]+)
  | (?P<qualified>[A-Za-z_][\w.]*![A-Za-z_.$@][\w.$@]*)
  | (?P<name>\$?[A-Za-z_][\w.]*)
  | (?P<op>\|\||&&|==|!=|<=|>=|<<|>>|[-+*/%&|^~!<>()\[\]])
""", re.VERBOSE)

# Binary operators by precedence level, lowest first.
_LEVELS: tuple[tuple[str, ...], ...] = (
    ("||",), ("&&",), ("|",), ("^",), ("&",), ("==", "!="), ("<", "<=", ">", ">="),
    ("<<", ">>"), ("+", "-"), ("*", "/", "%"),
)


class ExprError(Exception):
    """An expression that cannot be evaluated, with the reason in one line."""


@dataclass(frozen=True)
class Token:
    kind: str          # "number", "qualified", "name", "op", "end"
    text: str
    column: int        # 1-based, for messages


def tokenize(text: str) -> list[Token]:
    """The tokens of ``text``, ending with an "end" token; ExprError on a stray character."""
    tokens, at = [], 0
    while at < len(text):
        match = _TOKEN.match(text, at)
        if match is None:
            raise ExprError(f"unexpected character '{text[at]}' at column {at + 1} "
                            f"of '{text}'")
        if match.lastgroup != "space":
            tokens.append(Token(match.lastgroup, match.group(), at + 1))
        at = match.end()
    tokens.append(Token("end", "", len(text) + 1))
    return tokens


def _apply(op: str, a: int, b: int, text: str, quiet: bool = False) -> int:
    if op in ("/", "%") and b == 0:
        if quiet:
            return 0
        raise ExprError(f"division by zero in '{text}'")
    result = {
        "||": lambda: int(bool(a) or bool(b)), "&&": lambda: int(bool(a) and bool(b)),
        "|": lambda: a | b, "^": lambda: a ^ b, "&": lambda: a & b,
        "==": lambda: int(a == b), "!=": lambda: int(a != b), "<": lambda: int(a < b),
        "<=": lambda: int(a <= b), ">": lambda: int(a > b), ">=": lambda: int(a >= b),
        "<<": lambda: a << b if b < 64 else 0, ">>": lambda: a >> b,
        "+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b,
        "/": lambda: a // b, "%": lambda: a % b,
    }[op]()
    return result & MASK


class _Parser:
    """Recursive descent over the tokens, evaluating as it goes."""

    def __init__(self, text: str, target: Target | None, pid: int | None) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.at = 0
        self.target = target
        self.pid = pid
        self.quiet = 0          # > 0: inside the skipped side of && or ||

    @property
    def token(self) -> Token:
        return self.tokens[self.at]

    def take(self) -> Token:
        token = self.tokens[self.at]
        self.at += 1
        return token

    def expect(self, text: str) -> None:
        if self.token.text != text:
            raise self.error(f"expected '{text}'")
        self.take()

    def error(self, what: str) -> ExprError:
        where = "at the end" if self.token.kind == "end" else \
            f"at '{self.token.text}' (column {self.token.column})"
        return ExprError(f"bad expression '{self.text}': {what} {where}")

    def parse(self) -> int:
        if self.token.kind == "end":
            raise ExprError("empty expression")
        value = self.binary(0)
        if self.token.kind != "end":
            raise self.error("expected an operator")
        return value

    def binary(self, level: int) -> int:
        if level == len(_LEVELS):
            return self.unary()
        value = self.binary(level + 1)
        while self.token.kind == "op" and self.token.text in _LEVELS[level]:
            op = self.take().text
            # && and || short-circuit: the right side is still parsed (and its names
            # checked) but reads no memory, so `rax && [rax] == 5` is safe when rax is 0.
            skip = (op == "&&" and not value) or (op == "||" and value)
            self.quiet += skip
            right = self.binary(level + 1)
            self.quiet -= skip
            value = _apply(op, value, right, self.text, self.quiet > 0)
        return value

    def unary(self) -> int:
        if self.token.kind == "op" and self.token.text in ("-", "~", "!", "+"):
            op = self.take().text
            value = self.unary()
            return {"-": -value & MASK, "~": ~value & MASK, "!": int(not value),
                    "+": value}[op]
        return self.primary()

    def primary(self) -> int:
        token = self.token
        if token.kind == "number":
            self.take()
            digits = token.text.replace("`", "").replace("'", "")
            value = int(digits, 16 if digits[:2].lower() == "0x" else 10)
            if value > MASK:           # as gdb: no silent wrap of what was typed
                raise ExprError(f"numeric constant too large: {token.text} (more than 64 bits)")
            return value
        if token.text == "(":
            self.take()
            value = self.binary(0)
            self.expect(")")
            return value
        if token.text == "[":
            self.take()
            address = self.binary(0)
            self.expect("]")
            return self.memory(address)
        if token.kind == "name" and token.text.lower() == "poi" and \
                self.tokens[self.at + 1].text == "(":
            self.take()
            self.take()
            address = self.binary(0)
            self.expect(")")
            return self.memory(address)
        if token.kind in ("name", "qualified"):
            self.take()
            return self.name(token.text)
        raise self.error("expected a number, register, symbol or '('")

    def _need_target(self, what: str) -> Target:
        if self.target is None:
            raise ExprError(f"'{what}' needs a machine to read")
        return self.target

    def memory(self, address: int) -> int:
        target = self._need_target(f"[{address:#x}]")
        if self.quiet:
            return 0
        try:
            return target.read_u64(address, self.pid)
        except TargetError as err:
            raise ExprError(f"cannot read [{address:#x}]: {err}") from None

    def name(self, text: str) -> int:
        target = self._need_target(text)
        bare = text.lstrip("$")
        try:
            if text.startswith("$") or bare.lower() in target.register_names():
                return target.register(bare, self.pid) & MASK
            return target.resolve_symbol(text, self.pid) & MASK
        except TargetError as err:
            raise ExprError(str(err)) from None


def evaluate(text: str, target: Target | None = None, pid: int | None = None) -> int:
    """The 64-bit value of ``text``; registers, symbols and memory are ``pid``'s (None: the
    current process). ExprError (one line) for anything wrong."""
    return _Parser(text.strip(), target, pid).parse()
