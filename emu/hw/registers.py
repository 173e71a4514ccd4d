"""The CPU's registers as Unicorn names them, and how they are read and written fast.

``REGISTER_IDS`` maps the names the rest of the machine uses (``rax``, ``cr3``, ``eip``...) to
Unicorn's register numbers; ``RegisterBatch`` reads or writes a fixed list of them in one
call into libunicorn; ``subregister`` forms a narrower register (Capstone's ``ecx``, ``r9d``,
``ah``...) from the full ones (SDM Vol. 1 3.4.1, "General-Purpose Registers").
"""

from __future__ import annotations

import ctypes
import struct

from unicorn import Uc, UcError
from unicorn import x86_const as ux
from unicorn.unicorn_py3 import unicorn as _binding

GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
# The registers the machine names (Unicorn's UC_X86_REG_* numbers); any other is looked up
# in unicorn.x86_const by its name (emu.hw.cpu Cpu.reg_named).
REGISTER_IDS = {name: getattr(ux, f"UC_X86_REG_{name.upper()}") for name in
                (*GPRS, "rip", "rflags", "cs", "ss", "ds", "es", "fs", "gs",
                 "fs_base", "gs_base", "cr0", "cr2", "cr3", "cr4", "cr8",
                 "eax", "ebx", "ecx", "edx", "esi", "edi", "ebp", "esp",
                 "r8d", "r9d", "r10d", "r11d", "r12d", "r13d", "r14d", "r15d", "eip")}


class RegisterBatch:
    """A fixed list of registers (names in ``REGISTER_IDS``: 64 bits wide or less) read or
    written in one call into libunicorn (``uc_reg_read_batch`` / ``uc_reg_write_batch``
    through ctypes).

    The binding's ``reg_read`` costs about 2 us per register (it picks a ctypes class by
    register range, builds a fresh value, checks argument types); one raw batch call costs
    about 0.3 us, whatever the number of registers. Values are unsigned 64-bit,
    zero-extended: a narrower register (a selector, ``eax``) is read into a zeroed slot, as
    the binding does.
    """

    def __init__(self, uc: Uc, names: tuple[str, ...]) -> None:
        """Prepare the call for ``names`` on the engine ``uc``."""
        count = len(names)
        self.names = names
        self._uch = uc._uch
        self._count = count
        self._ids = (ctypes.c_int * count)(*(REGISTER_IDS[name] for name in names))
        self._buffer = bytearray(8 * count)
        self._layout = struct.Struct(f"<{count}Q")
        base = ctypes.addressof((ctypes.c_uint64 * count).from_buffer(self._buffer))
        self._pointers = (ctypes.c_void_p * count)(*(base + 8 * i for i in range(count)))
        # Unicorn stores only a narrow register's own bytes: its slot is zeroed before a read.
        self._zeros = bytes(8 * count) if any(name in _NARROW for name in names) else None

    def read(self) -> tuple[int, ...]:
        """The registers' values, in the order of ``names``."""
        if self._zeros is not None:
            self._buffer[:] = self._zeros
        status = UNICORN.uc_reg_read_batch(self._uch, self._ids, self._pointers, self._count)
        if status:
            raise UcError(status)
        return self._layout.unpack_from(self._buffer)

    def read_context(self, context: _binding.UcContext) -> tuple[int, ...]:
        """The registers' values in a saved context (a UcContext from ``context_save``), in
        the order of ``names``: one ``uc_context_reg_read_batch`` call, where the binding's
        own context read costs about 2 us a register, as its ``reg_read`` does."""
        if self._zeros is not None:
            self._buffer[:] = self._zeros
        status = UNICORN.uc_context_reg_read_batch(context.context, self._ids, self._pointers,
                                                   self._count)
        if status:
            raise UcError(status)
        return self._layout.unpack_from(self._buffer)

    def write(self, values: tuple[int, ...] | list[int]) -> None:
        """Load the registers with ``values`` (each modulo 2^64), in the order of ``names``."""
        try:
            self._layout.pack_into(self._buffer, 0, *values)
        except struct.error:             # a negative value, or one of 2^64 and beyond
            self._layout.pack_into(self._buffer, 0, *[value & MASK64 for value in values])
        status = UNICORN.uc_reg_write_batch(self._uch, self._ids, self._pointers, self._count)
        if status:
            raise UcError(status)


# libunicorn's own functions without the binding's argtypes: ctypes then converts nothing
# (every argument is already a ctypes object or a small int), half the cost of a call.
UNICORN = ctypes.CDLL(_binding.uclib._name)
MASK64 = (1 << 64) - 1
_NARROW = frozenset({"cs", "ss", "ds", "es", "fs", "gs", "eax", "ebx", "ecx", "edx", "esi", "edi",
                     "ebp", "esp", "r8d", "r9d", "r10d", "r11d", "r12d", "r13d", "r14d", "r15d",
                     "eip"})
_LEGACY = {"rax": "a", "rbx": "b", "rcx": "c", "rdx": "d"}
_SUBREGISTERS: dict[str, tuple[str, int, int]] = {
    **{f"e{x}x": (r, 0, 32) for r, x in _LEGACY.items()},
    **{f"{x}x": (r, 0, 16) for r, x in _LEGACY.items()},
    **{f"{x}l": (r, 0, 8) for r, x in _LEGACY.items()},
    **{f"{x}h": (r, 8, 8) for r, x in _LEGACY.items()},
    **{f"e{r[1:]}": (r, 0, 32) for r in ("rsi", "rdi", "rbp", "rsp", "rip")},
    **{r[1:]: (r, 0, 16) for r in ("rsi", "rdi", "rbp", "rsp", "rip")},
    **{f"{r[1:]}l": (r, 0, 8) for r in ("rsi", "rdi", "rbp", "rsp")},
    **{f"r{i}{s}": (f"r{i}", 0, w) for i in range(8, 16) for s, w in (("d", 32), ("w", 16),
                                                                       ("b", 8))},
}


def subregister(registers: dict[str, int], name: str) -> int:
    """Register ``name`` (a Capstone name: ``ecx``, ``r9d``, ``si``...) from the full
    registers in ``registers``; KeyError for one they do not hold."""
    if name in registers:
        return registers[name]
    full, shift, width = _SUBREGISTERS[name]
    return (registers[full] >> shift) & ((1 << width) - 1)

