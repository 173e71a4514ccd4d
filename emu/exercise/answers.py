"""The answer grammar of docs/exercises.md: numbers, #PF error codes, entries and bits.

Every parser raises AnswerError with one line saying what is wrong; none returns a guess.
"""

from __future__ import annotations

import re

from emu.exercise import AnswerError
from emu.hw.mmu import PFErr

_SEPARATORS = str.maketrans("", "", "_'`")      # 0x7f7'93950000 (WinDbg writes 0x7f7`9395...)

# Names of the #PF error code bits (SDM Vol. 3A §4.7, Figure 4-12), as the SDM and the
# debugger's `walk` spell them; upper case, without the slash or with it.
BIT_NAMES = {"P": PFErr.P, "W": PFErr.W, "W/R": PFErr.W, "WR": PFErr.W, "U": PFErr.U,
             "U/S": PFErr.U, "US": PFErr.U, "RSVD": PFErr.RSVD, "ID": PFErr.ID,
             "I/D": PFErr.ID}


def parse_number(text: str, what: str = "number") -> int:
    """``0x`` hex or decimal, 0 .. 2**64 - 1 (``_``, ``'`` and `````` may separate digits)."""
    raw = text.strip()
    word = raw.translate(_SEPARATORS)
    if word.lower().startswith("0x"):
        digits, base = word[2:], 16
        if not digits:
            raise AnswerError(f"{what} {raw!r}: 0x with no hex digits after it")
        if not re.fullmatch(r"[0-9a-fA-F]+", digits):
            raise AnswerError(f"{what} {raw!r}: not a hex number")
    else:
        digits, base = word, 10
        if not re.fullmatch(r"[0-9]+", digits):
            raise AnswerError(f"{what} {raw!r}: not a number (decimal, or hex with 0x)")
    value = int(digits, base)
    if value >= 1 << 64:
        raise AnswerError(f"{what} {raw!r}: wider than 64 bits")
    return value


def parse_error_code(text: str) -> int:
    """A #PF error code: a number, or bit names joined by ``|``, ``+``, ``,`` or spaces
    (``P|W|U``), or both (``0x7 (P|W|U)``, which must agree); only bits 0..4 (P, W/R, U/S,
    RSVD, I/D) are defined here."""
    raw = text.strip()
    if not raw:
        raise AnswerError("missing the error code after #PF")
    both = re.fullmatch(r"(\d\w*)\s*\((.*)\)", raw)
    if both:                      # `0x7 (P|W|U)`, as the answers are printed: both must agree
        code, named = parse_error_code(both.group(1)), parse_error_code(both.group(2))
        if code != named:
            raise AnswerError(f"error code {raw!r}: {code:#x} is not {both.group(2).strip()}")
        return code
    if raw[0].isdigit():
        code = parse_number(raw, "error code")
        if code & ~0x1F:
            raise AnswerError(f"error code {raw!r}: only bits 0-4 (P, W, U, RSVD, ID) are "
                              "defined for this machine's #PF")
        return code
    code = 0
    for name in re.split(r"[|+,\s]+", raw.upper()):
        if not name:
            continue
        bit = BIT_NAMES.get(name)
        if bit is None:
            raise AnswerError(f"error code {raw!r}: unknown bit {name!r} (the bits: P, W, U, "
                              "RSVD, ID)")
        code |= int(bit)
    return code


def error_code_names(code: int) -> str:
    """``P|W|U``: the set bits of a #PF error code by name (``0`` when none is set)."""
    names = [name for name, bit in (("P", PFErr.P), ("W", PFErr.W), ("U", PFErr.U),
                                    ("RSVD", PFErr.RSVD), ("ID", PFErr.ID)) if code & bit]
    return "|".join(names) or "0"
