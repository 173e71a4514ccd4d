"""The registers gdb sees, in one table: the target description (``target.xml``) is built
from it, and so are the ``g``/``G``/``p``/``P`` packets, so the two always agree.

gdb's amd64 code requires three features (GDB manual, "i386 Features"):
``org.gnu.gdb.i386.core`` (the general registers, RIP, EFLAGS, the segment selectors and
the x87 unit), ``org.gnu.gdb.i386.sse`` (XMM0-15, MXCSR) and, for FS/GS bases,
``org.gnu.gdb.i386.segments``. A fourth feature of our own shows the control registers
that the page walk depends on (CR0, CR2, CR3, CR4, EFER), with their bits named as in the
SDM, so ``info registers cr0`` prints ``[ PE MP ET NE WP PG ]``.

Every register travels little-endian in ``bits // 8`` bytes, in table order; the number
gdb uses in ``p``/``P`` is the index in the table. ``RegisterPackets`` answers those
packets for the stub.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from emu.debugger.gdbthreads import saved_registers
from emu.debugger.rsp import PACKETS, ProtocolError, packet, parse_hex, parse_hex_bytes
from emu.debugger.stops import SessionError
from emu.hw.mmu import CR0, CR4, EFER

ARCHITECTURE = "i386:x86-64"


@dataclass(frozen=True)
class GdbRegister:
    """One register of the description: gdb's name, width, type and group."""

    name: str
    bits: int
    type: str
    feature: str
    group: str | None = None


class Feature(enum.StrEnum):
    """The target-description features we send."""

    CORE = "org.gnu.gdb.i386.core"
    SSE = "org.gnu.gdb.i386.sse"
    SEGMENTS = "org.gnu.gdb.i386.segments"
    SYSTEM = "org.emu.x86-64.system"


GPR_NAMES = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
SEGMENT_NAMES = ("cs", "ss", "ds", "es", "fs", "gs")
X87_CONTROL = ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop")
PTR_TYPES = {"rbp": "data_ptr", "rsp": "data_ptr"}


def _layout() -> tuple[GdbRegister, ...]:
    core, sse = Feature.CORE, Feature.SSE
    regs = [GdbRegister(n, 64, PTR_TYPES.get(n, "int64"), core) for n in GPR_NAMES]
    regs.append(GdbRegister("rip", 64, "code_ptr", core))
    regs.append(GdbRegister("eflags", 32, "i386_eflags", core))
    regs += [GdbRegister(n, 32, "int32", core) for n in SEGMENT_NAMES]
    regs += [GdbRegister(f"st{i}", 80, "i387_ext", core) for i in range(8)]
    regs += [GdbRegister(n, 32, "int", core, "float") for n in X87_CONTROL]
    regs += [GdbRegister(f"xmm{i}", 128, "vec128", sse) for i in range(16)]
    regs.append(GdbRegister("mxcsr", 32, "i386_mxcsr", sse, "vector"))
    regs += [GdbRegister(n, 64, "int", Feature.SEGMENTS) for n in ("fs_base", "gs_base")]
    regs += [GdbRegister("cr0", 64, "emu_cr0", Feature.SYSTEM, "system"),
             GdbRegister("cr2", 64, "data_ptr", Feature.SYSTEM, "system"),
             GdbRegister("cr3", 64, "int64", Feature.SYSTEM, "system"),
             GdbRegister("cr4", 64, "emu_cr4", Feature.SYSTEM, "system"),
             GdbRegister("efer", 64, "emu_efer", Feature.SYSTEM, "system")]
    return tuple(regs)


REGISTERS = _layout()
NUMBER = {reg.name: i for i, reg in enumerate(REGISTERS)}
G_PACKET_BYTES = sum(reg.bits // 8 for reg in REGISTERS)

# -- types: bit names for the flags registers ------------------------------------------------

EFLAGS_BITS = {"CF": 0, "PF": 2, "AF": 4, "ZF": 6, "SF": 7, "TF": 8, "IF": 9,
               "DF": 10, "OF": 11, "NT": 14, "RF": 16, "VM": 17, "AC": 18, "VIF": 19,
               "VIP": 20, "ID": 21}                                  # SDM Vol. 1 §3.4.3
MXCSR_BITS = {"IE": 0, "DE": 1, "ZE": 2, "OE": 3, "UE": 4, "PE": 5, "DAZ": 6, "IM": 7,
              "DM": 8, "ZM": 9, "OM": 10, "UM": 11, "PM": 12, "FZ": 15}  # SDM Vol. 1 §10.2.3


def _bits_of(flag: type[enum.IntFlag]) -> dict[str, int]:
    return {member.name: member.value.bit_length() - 1 for member in flag}


def _flags_xml(type_id: str, size: int, bits: Mapping[str, int]) -> str:
    fields = "".join(f'<field name="{name}" start="{bit}" end="{bit}"/>'
                     for name, bit in bits.items())
    return f'<flags id="{type_id}" size="{size}">{fields}</flags>'


VECTOR_XML = ('<vector id="v4f" type="ieee_single" count="4"/>'
              '<vector id="v2d" type="ieee_double" count="2"/>'
              '<vector id="v16i8" type="int8" count="16"/>'
              '<vector id="v8i16" type="int16" count="8"/>'
              '<vector id="v4i32" type="int32" count="4"/>'
              '<vector id="v2i64" type="int64" count="2"/>'
              '<union id="vec128"><field name="v4_float" type="v4f"/>'
              '<field name="v2_double" type="v2d"/><field name="v16_int8" type="v16i8"/>'
              '<field name="v8_int16" type="v8i16"/><field name="v4_int32" type="v4i32"/>'
              '<field name="v2_int64" type="v2i64"/><field name="uint128" type="uint128"/>'
              '</union>')

FEATURE_TYPES = {
    Feature.CORE: _flags_xml("i386_eflags", 4, EFLAGS_BITS),
    Feature.SSE: VECTOR_XML + _flags_xml("i386_mxcsr", 4, MXCSR_BITS),
    Feature.SEGMENTS: "",
    Feature.SYSTEM: (_flags_xml("emu_cr0", 8, _bits_of(CR0)) +
                     _flags_xml("emu_cr4", 8, _bits_of(CR4)) +
                     _flags_xml("emu_efer", 8, _bits_of(EFER))),
}


def _reg_xml(reg: GdbRegister, number: int) -> str:
    group = f' group="{reg.group}"' if reg.group else ""
    return (f'<reg name="{reg.name}" bitsize="{reg.bits}" type="{reg.type}" '
            f'regnum="{number}"{group}/>')


def target_xml() -> bytes:
    """The target description gdb reads with ``qXfer:features:read:target.xml``."""
    parts = ['<?xml version="1.0"?>', '<!DOCTYPE target SYSTEM "gdb-target.dtd">',
             f"<target><architecture>{ARCHITECTURE}</architecture>"]
    for feature in Feature:
        parts.append(f'<feature name="{feature.value}">{FEATURE_TYPES[feature]}')
        parts += [_reg_xml(reg, i) for i, reg in enumerate(REGISTERS)
                  if reg.feature == feature]
        parts.append("</feature>")
    parts.append("</target>")
    return "\n".join(parts).encode()


TARGET_XML = target_xml()

# -- values <-> packet bytes -----------------------------------------------------------------


def encode_register(reg: GdbRegister, value: int) -> bytes:
    """``value`` as the register's little-endian bytes (wider values are cut to size)."""
    size = reg.bits // 8
    return (value & ((1 << reg.bits) - 1)).to_bytes(size, "little")


def decode_register(reg: GdbRegister, data: bytes) -> int:
    """The value of the register's little-endian bytes."""
    return int.from_bytes(data, "little")


def encode_all(values: Mapping[str, int]) -> bytes:
    """Every register of the table in order (the ``g`` reply, before hex); missing ones as 0."""
    return b"".join(encode_register(reg, values.get(reg.name, 0)) for reg in REGISTERS)


def decode_all(data: bytes) -> dict[str, int]:
    """Split a ``G`` packet's bytes into registers; a short packet sets only those it holds."""
    values: dict[str, int] = {}
    offset = 0
    for reg in REGISTERS:
        size = reg.bits // 8
        if offset + size > len(data):
            break
        values[reg.name] = decode_register(reg, data[offset:offset + size])
        offset += size
    return values


# -- the x87 and SSE units of the CPU (the target reports the others) --------------------------

# gdb's x87 control registers -> the CPU's names for them (emu.hw.cpu.Cpu.reg_named)
X87_SOURCES = {"fctrl": "fpcw", "fstat": "fpsw", "ftag": "fptag", "fiseg": "fcs",
               "fioff": "fip", "foseg": "fds", "fooff": "fdp", "fop": "fop"}
FPU_NAMES = frozenset({*X87_SOURCES, *(f"st{i}" for i in range(8)),
                       *(f"xmm{i}" for i in range(16)), "mxcsr"})


class RegisterFile(Protocol):
    """What the x87/SSE accessors need of emu.hw.cpu.Cpu."""

    def reg_named(self, name: str) -> Any: ...

    def set_reg_named(self, name: str, value: Any) -> None: ...


def _physical_st(cpu: RegisterFile, i: int) -> str:
    """ST(i) is physical register (TOP + i) mod 8, TOP being FSW bits 13..11 (SDM Vol. 1
    §8.1.2); the CPU names the physical ones fp0..fp7."""
    top = (cpu.reg_named("fpsw") >> 11) & 7
    return f"fp{(top + i) & 7}"


def fpu_values(cpu: RegisterFile) -> dict[str, int]:
    """The x87 and SSE registers of the CPU by gdb's names (ST(i) as 80-bit values)."""
    values = {name: cpu.reg_named(source) for name, source in X87_SOURCES.items()}
    for i in range(8):
        mantissa, exponent = cpu.reg_named(_physical_st(cpu, i))
        values[f"st{i}"] = exponent << 64 | mantissa
    values.update({f"xmm{i}": cpu.reg_named(f"xmm{i}") for i in range(16)})
    values["mxcsr"] = cpu.reg_named("mxcsr")
    return values


def set_fpu_register(cpu: RegisterFile, name: str, value: int) -> None:
    """Write one x87 or SSE register of the CPU by gdb's name."""
    if name.startswith("st"):
        mantissa, exponent = value & ((1 << 64) - 1), (value >> 64) & 0xFFFF
        cpu.set_reg_named(_physical_st(cpu, int(name[2:])), (mantissa, exponent))
    else:
        cpu.set_reg_named(X87_SOURCES.get(name, name), value)


# -- the register packets ------------------------------------------------------------------------

WRITABLE = frozenset({*GPR_NAMES, "rip", "eflags", *FPU_NAMES})   # what g/P may change


class RegisterPackets:
    """``g``, ``G``, ``p``, ``P``: the registers of the thread gdb selected with ``Hg``, the
    CPU's when it is the one running (a mixin of emu.debugger.gdbstub.GdbStub, which
    provides ``session`` and ``_selected_thread``)."""

    session: Any

    def _selected_thread(self) -> Any:
        raise NotImplementedError

    def register_values(self) -> dict[str, int]:
        """The selected thread's registers by gdb's names (absent ones read as 0)."""
        thread = self._selected_thread()
        regs = dict(self.session.target.registers())
        if thread is None:
            regs.update(fpu_values(self.session.executive.cpu))
        else:                   # off the CPU: its saved context (emu.debugger.gdbthreads)
            regs = saved_registers(thread, regs)
        # CR3 as the hardware holds it: with CR4.PCIDE, bits 11:0 are the PCID (SDM Vol. 3A
        # 4.10.1); the target's "cr3" is the PML4's address alone.
        if regs.get("cr4", 0) & CR4.PCIDE:
            pid = None if thread is None else thread.process.pid
            regs["cr3"] |= self.session.target.pcid(pid) or 0
        regs.setdefault("eflags", regs.get("rflags", 0))
        return regs

    def _set_register(self, name: str, value: int) -> None:
        if self._selected_thread() is not None:
            raise SessionError("only the registers of the thread on the CPU can be changed")
        if name in FPU_NAMES:
            set_fpu_register(self.session.executive.cpu, name, value)
        else:
            self.session.target.set_register("rflags" if name == "eflags" else name, value)

    @packet(PACKETS, "g")
    def _read_registers(self, args: bytes) -> bytes:
        return encode_all(self.register_values()).hex().encode()

    @packet(PACKETS, "G")
    def _write_registers(self, args: bytes) -> bytes:
        data = parse_hex_bytes(args)
        if len(data) != G_PACKET_BYTES:
            raise ProtocolError(f"G needs {G_PACKET_BYTES} bytes, not {len(data)}")
        old = self.register_values()
        changed = {name: value for name, value in decode_all(data).items()
                   if value != old.get(name, 0)}
        refused = sorted(set(changed) - WRITABLE)
        if refused:                                 # all or nothing
            raise SessionError(f"cannot change {', '.join(refused)}")
        for name, value in changed.items():
            self._set_register(name, value)
        return b"OK"

    @packet(PACKETS, "p")
    def _read_register(self, args: bytes) -> bytes:
        reg = _register(args)
        return encode_register(reg, self.register_values().get(reg.name, 0)).hex().encode()

    @packet(PACKETS, "P")
    def _write_register(self, args: bytes) -> bytes:
        number, sep, value = args.partition(b"=")
        reg, data = _register(number), parse_hex_bytes(value)
        if not sep or len(data) != reg.bits // 8:
            raise ProtocolError(f"P needs N={reg.bits // 4} hex digits")
        self._set_register(reg.name, decode_register(reg, data))
        return b"OK"


def _register(text: bytes) -> GdbRegister:
    """The register numbered by a p/P packet."""
    n = parse_hex(text, "register number")
    if not 0 <= n < len(REGISTERS):
        raise ProtocolError(f"no register {n}")
    return REGISTERS[n]
