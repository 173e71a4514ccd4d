"""Static checks of the process, thread, event and file apps (no emulator needed).

These apps exercise services 0x03-0x11 (docs/abi.md); the executive side may
not run them yet, so this only checks what the build must guarantee: each app
is a static ELF64 ET_EXEC whose entry point lies in an executable segment and
which has `main`, and the few instructions a lesson depends on are really
there (a `lock`ed add in `threads`, a plain load ... store in `race`, each
fault of `crasher` on the instruction it names).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import pytest
from capstone import CS_ARCH_X86, CS_MODE_64, Cs
from capstone.x86 import X86_OP_MEM, X86_PREFIX_LOCK
from elfcheck import (  # noqa: E402
    APPS_DIR,
    GUEST,
    check_entry_is_executable,
    loads,
    open_elf,
    segment_holding,
    symtab_entry,
)
from elfcheck import build as build_guests  # noqa: E402
from elftools.elf.constants import P_FLAGS
from elftools.elf.elffile import ELFFile

EXEC_BASE = 0x400000  # link/app.ld links ET_EXEC apps here

PROCESS_APPS = [
    "counter",
    "crasher",
    "handles",
    "race",
    "reader",
    "sleeper",
    "spawner",
    "threadcrash",
    "threads",
    "waiter",
    "yielder",
]

# crasher's kinds: the function that faults and the instruction it must contain.
CRASHER_FAULTS = [
    ("fault_div", "idiv"),
    ("fault_priv", "hlt"),
    ("fault_ud", "ud2"),
    ("fault_int3", "int3"),
]


@pytest.fixture(scope="module")
def built() -> Path:
    """Builds the guests if anything is missing or stale; returns guest/build/apps."""
    return build_guests(APPS_DIR)


def _elf(built: Path, app: str):
    return open_elf(built / app)


_loads, _segment_holding, _symbol = loads, segment_holding, symtab_entry


def _disassemble(elf: ELFFile, function: str) -> list:
    """The instructions of `function` (a sized symbol in an executable segment)."""
    sym = _symbol(elf, function)
    assert sym is not None, f"no symbol {function}"
    address, size = sym["st_value"], sym["st_size"]
    assert size > 0, f"{function} has no size"
    seg = _segment_holding(elf, address)
    assert seg is not None and seg["p_flags"] & P_FLAGS.PF_X, hex(address)
    code = seg.data()[address - seg["p_vaddr"] : address - seg["p_vaddr"] + size]
    cs = Cs(CS_ARCH_X86, CS_MODE_64)
    cs.detail = True
    return list(cs.disasm(code, address))


def _memory_target(insn) -> int | None:
    """The absolute address of a RIP-relative memory operand of `insn`, or None."""
    for op in insn.operands:
        if op.type == X86_OP_MEM and insn.reg_name(op.mem.base) == "rip":
            return insn.address + insn.size + op.mem.disp
    return None


def test_every_process_app_has_a_source() -> None:
    for app in PROCESS_APPS:
        assert (GUEST / "apps" / f"{app}.c").is_file(), app


@pytest.mark.parametrize("app", PROCESS_APPS)
def test_is_static_elf64_exec(built: Path, app: str) -> None:
    elf = _elf(built, app)
    assert elf.elfclass == 64
    assert elf.little_endian
    assert elf["e_machine"] == "EM_X86_64"
    assert elf["e_type"] == "ET_EXEC"
    assert min(seg["p_vaddr"] for seg in _loads(elf)) >= EXEC_BASE
    kinds = {seg["p_type"] for seg in elf.iter_segments()}
    assert "PT_INTERP" not in kinds
    assert "PT_DYNAMIC" not in kinds


@pytest.mark.parametrize("app", PROCESS_APPS)
def test_entry_point_is_in_an_executable_segment(built: Path, app: str) -> None:
    check_entry_is_executable(_elf(built, app))


@pytest.mark.parametrize("app", PROCESS_APPS)
def test_has_main(built: Path, app: str) -> None:
    elf = _elf(built, app)
    main = _symbol(elf, "main")
    assert main is not None
    seg = _segment_holding(elf, main["st_value"])
    assert seg is not None and seg["p_flags"] & P_FLAGS.PF_X


def test_threads_increments_with_a_locked_instruction(built: Path) -> None:
    elf = _elf(built, "threads")
    counter = _symbol(elf, "counter")["st_value"]
    locked = [
        insn
        for insn in _disassemble(elf, "add_atomically")
        if X86_PREFIX_LOCK in insn.prefix and _memory_target(insn) == counter
    ]
    assert locked, "expected a lock-prefixed read-modify-write of counter"


def test_race_loads_and_stores_counter_separately(built: Path) -> None:
    elf = _elf(built, "race")
    counter = _symbol(elf, "counter")["st_value"]
    insns = _disassemble(elf, "add_racily")
    assert not any(X86_PREFIX_LOCK in insn.prefix for insn in insns)
    touching = [(i, insn) for i, insn in enumerate(insns) if _memory_target(insn) == counter]
    # A mov whose destination (Intel order: the first operand) is memory is a store.
    stores = [i for i, insn in touching if insn.operands[0].type == X86_OP_MEM]
    loads = [i for i, insn in touching if insn.operands[0].type != X86_OP_MEM]
    assert loads and stores, [insn.op_str for _, insn in touching]
    assert all(insns[i].mnemonic == "mov" for i, _ in touching)
    # The delay loop sits between the load and the store: that is the window preemption hits.
    assert stores[0] - loads[0] > 2


@pytest.mark.parametrize(("function", "mnemonic"), CRASHER_FAULTS)
def test_crasher_fault_instruction(built: Path, function: str, mnemonic: str) -> None:
    insns = _disassemble(_elf(built, "crasher"), function)
    assert mnemonic in {insn.mnemonic for insn in insns}


def test_crasher_exec_target_is_data_without_execute(built: Path) -> None:
    elf = _elf(built, "crasher")
    target = _symbol(elf, "crasher_data_code")
    assert target is not None
    seg = _segment_holding(elf, target["st_value"])
    assert seg is not None
    assert seg["p_flags"] & P_FLAGS.PF_W
    assert not seg["p_flags"] & P_FLAGS.PF_X
    calls = [insn for insn in _disassemble(elf, "fault_exec") if insn.mnemonic == "call"]
    assert any(insn.op_str == hex(target["st_value"]) for insn in calls)
