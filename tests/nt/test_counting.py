"""The block counter against the per-instruction counter (emu/hw/native.py): the same
counts, the same schedules, the same ``--max-insns`` stops, for every guest app.

The per-instruction counter is the reference (the counter of record before block counting):
each test runs a machine both ways and compares what a user sees.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import emurun
import pytest

from emu.hw import native
from emu.machine import Machine
from emu.nt.events import Event

ROOT = Path(__file__).resolve().parents[2]
APPS = ROOT / "guest" / "build" / "apps"
CAP = 3_000_000            # a budget every app reaches or ends before: both ways alike
ALL_APPS = sorted(p.name for p in APPS.iterdir() if p.is_file() and not p.suffix)
REGISTERS = ("rip", "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9",
             "r10", "r11", "r12", "r13", "r14", "r15", "rflags", "cs")


def run(app: str, args: list[str], *, per_instruction: bool, max_insns: int = CAP,
        mem: str = "64M", apps: int = 1, pagefile_size: int | None = None) -> dict:
    """Run ``apps`` copies of ``app`` counted one way; what a user of the machine sees."""
    saved = native.PER_INSTRUCTION
    native.PER_INSTRUCTION = per_instruction
    output = bytearray()
    try:
        m = Machine(mem, max_insns=max_insns, pagefile_size=pagefile_size,
                    console=lambda _proc, data: output.extend(data))
    finally:
        native.PER_INSTRUCTION = saved
    schedule = hashlib.sha256()
    ex = m.executive
    ex.events.subscribe(lambda event, details: event is Event.THREAD_DISPATCH and schedule.update(
        f"{details['thread'].process.pid}.{details['thread'].tid}@{ex.clock};".encode()))
    try:
        for _ in range(apps):
            m.spawn(APPS / app, args)
        result = m.run()
        return {
            "stopped": result.stopped,
            "instructions": result.stats.instructions,
            "exits": [p.exit_status for p in result.processes],
            "switches": result.stats.context_switches,
            "page_faults": result.stats.page_faults,
            "output": bytes(output),
            "schedule": schedule.hexdigest(),
            "registers": [ex.cpu.reg(r) for r in REGISTERS],
            "blocks": ex.cpu.native.blocks,
        }
    finally:
        m.close()


def same_both_ways(app: str, args: list[str], **kwargs) -> tuple[dict, dict]:
    by_block = run(app, args, per_instruction=False, **kwargs)
    by_instruction = run(app, args, per_instruction=True, **kwargs)
    assert by_instruction.pop("blocks") == 0
    blocks = by_block.pop("blocks")
    # The block counter did the counting (a budget of 16 or less is a step: counted one by
    # one from its start, emu/hw/native.py).
    assert blocks > 0 or by_block["instructions"] <= native._SMALL_BUDGET
    assert by_block == by_instruction
    return by_block, by_instruction


# sweep: its 64 MiB buffer and the rest. vmhog: commit limited by 16 MiB of RAM (with a
# pagefile, a full one makes every page-out slow: issue 13, item 4).
MACHINES = {"sweep": {"mem": "96M"}, "vmhog": {"mem": "16M", "pagefile_size": 0}}


@pytest.mark.parametrize("app", ALL_APPS)
def test_every_app_counts_the_same_both_ways(app: str) -> None:
    same_both_ways(app, [], **MACHINES.get(app, {}))


def test_two_compute_bound_processes_keep_their_schedule() -> None:
    """Preemption at the end of each quantum: the same switches at the same instants."""
    got, _ = same_both_ways("loop", ["200000"], apps=2)
    assert got["stopped"] is None and got["exits"] == [0, 0]


@pytest.mark.parametrize("n", [*range(1, 13), 97, 250, 251, 252, 253, 571, 572])
def test_max_insns_stops_at_exactly_n(n: int) -> None:
    """``--max-insns N`` for N inside blocks and at their edges: N instructions, and the
    CPU in the state the per-instruction counter leaves it in."""
    got, _ = same_both_ways("hello", [], max_insns=n)
    if got["stopped"] == "instruction limit":
        assert got["instructions"] == n


# -- bad input ----------------------------------------------------------------------------

def emu(*args: str) -> subprocess.CompletedProcess:
    """``python -m emu ARGS``, in a fork of this process (tests/emurun.py)."""
    return emurun.emu(*args, cwd=ROOT, timeout=120)


@pytest.mark.parametrize(("args", "fragment"), [
    (["run", "--max-insns", "0", APPS / "hello"], "--max-insns: must be positive"),
    (["run", "--max-insns", str(1 << 64), APPS / "hello"], "--max-insns: must be below 2^64"),
    (["run", "--max-insns", "0x10000000000000000", APPS / "hello"], "must be below 2^64"),
    (["run", "--quantum", str(1 << 64), APPS / "hello"], "--quantum: must be below 2^64"),
    (["debug", "--snapshot-interval", str(1 << 70), APPS / "hello"], "must be below 2^64"),
])
def test_a_budget_of_zero_or_beyond_64_bits_is_refused_in_one_line(args, fragment) -> None:
    r = emu(*args)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and fragment in r.stderr, r.stderr


def test_the_largest_budget_runs_to_the_end() -> None:
    r = emu("run", "--max-insns", str((1 << 64) - 1), APPS / "hello")
    assert (r.returncode, r.stdout) == (0, "Hello, world!\n")


def test_machine_refuses_a_budget_beyond_64_bits() -> None:
    with pytest.raises(ValueError, match="below 2\\^64"):
        Machine("16M", max_insns=1 << 64)


@pytest.mark.parametrize("app, args", [("loop", ["200000"]), ("pattern", ["2", "1"])])
def test_a_lone_thread_keeps_the_cpu_at_its_quantum_ends(app, args):
    # KiQuantumEnd with no other thread ready: the thread goes on with a new quantum and no
    # dispatch (one context switch in all). Everything else is what the full turn at every
    # quantum end gives (taken when someone watches each dispatch, as the event log does):
    # the same instructions, output, registers and KUSER_SHARED_DATA's times.
    def seen(watched: bool) -> dict:
        output = bytearray()
        m = Machine("64M", max_insns=CAP, quantum=10_000,
                    console=lambda _proc, data: output.extend(data))
        ex = m.executive
        dispatches = []
        if watched:
            ex.events.subscribe(lambda event, details: event is Event.THREAD_DISPATCH and
                                dispatches.append(ex.clock))
        try:
            m.spawn(APPS / app, args)
            result = m.run()
            return {"instructions": result.stats.instructions, "output": bytes(output),
                    "exits": [p.exit_status for p in result.processes],
                    "registers": [ex.cpu.reg(r) for r in REGISTERS],
                    "kuser": ex.mem.read(ex.shared_data_frame * 4096, 4096),
                    "switches": result.stats.context_switches, "dispatches": dispatches}
        finally:
            m.close()

    lone, watched = seen(False), seen(True)
    assert lone.pop("switches") == 1 and lone.pop("dispatches") == []
    assert watched.pop("switches") == len(watched.pop("dispatches")) > 10
    assert lone == watched
