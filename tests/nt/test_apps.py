"""Each guest app run through the Python API: output, exit status, exception code and parameters."""

from __future__ import annotations

import re

import pytest

from emu.nt.status import NTSTATUS

AV = NTSTATUS.STATUS_ACCESS_VIOLATION


def run_app(machine_factory, apps, name, *args, **kwargs):
    m = machine_factory(**kwargs)
    proc = m.spawn(apps / name, list(args))
    result = m.run()
    return proc, result


def test_hello_prints_and_exits_zero(machine_factory, apps):
    proc, result = run_app(machine_factory, apps, "hello", "one", "two")
    assert proc.output == b"Hello, world!\nargv[1] = one\nargv[2] = two\n"
    assert proc.exit_status == 0 and proc.exception is None
    assert result.bugcheck is None and result.stopped is None


def test_static_pie_is_relocated(machine_factory, apps):
    proc, _ = run_app(machine_factory, apps, "hello-pie", "x")
    assert proc.output == b"Hello, world!\nargv[1] = x\n"
    assert proc.exit_status == 0
    assert proc.image.base != 0 and proc.image.entry >= 0x7FF6_0000_0000


def test_exit_code_comes_from_main(machine_factory, apps):
    proc, _ = run_app(machine_factory, apps, "exitcode", "42")
    assert proc.exit_status == 42 and proc.exception is None


def test_getpid(machine_factory, apps):
    proc, _ = run_app(machine_factory, apps, "getpid")
    assert proc.output == f"pid {proc.pid}\n".encode()


@pytest.mark.parametrize("name, access, address", [
    ("badread", "read", 0xFFFF_8000_0000_1000),
    ("kwrite", "write", 0xFFFF_8000_0000_0010),
    ("kexec", "execute", 0xFFFF_8000_0000_1000),
    ("nullread", "read", 0),
    ("nullwrite", "write", 0),
])
def test_access_violations(machine_factory, apps, name, access, address):
    proc, result = run_app(machine_factory, apps, name)
    exc = proc.exception
    assert exc is not None and exc.code == AV and proc.exit_status == AV
    assert exc.access == access and exc.address == address
    assert exc.params == ({"read": 0, "write": 1, "execute": 8}[access], address)
    assert result.bugcheck is None


def test_kernel_read_is_stopped_by_the_us_bit(machine_factory, apps):
    proc, _ = run_app(machine_factory, apps, "badread")
    # present supervisor page read from ring 3: error code P|U = 5
    assert "0x5" in proc.exception.detail and "U/S" in proc.exception.detail


def _printed_address(output: bytes) -> int:
    return int(re.search(rb"0x([0-9a-f]+)", output).group(1), 16)


def test_write_to_read_only_data(machine_factory, apps):
    proc, _ = run_app(machine_factory, apps, "rowrite")
    exc = proc.exception
    assert exc.code == AV and exc.access == "write"
    assert exc.address == _printed_address(proc.output)
    assert exc.params[0] == 1


def test_execute_data_page(machine_factory, apps):
    proc, _ = run_app(machine_factory, apps, "execdata")
    exc = proc.exception
    assert exc.code == AV and exc.access == "execute" and exc.params[0] == 8
    assert exc.address == _printed_address(proc.output) == exc.rip


@pytest.mark.parametrize("instruction", ["cli", "sti", "hlt", "mov-cr3", "wrmsr", "in", "out",
                                         "lgdt", "invlpg"])
def test_privileged_instructions(machine_factory, apps, instruction):
    proc, _ = run_app(machine_factory, apps, "privileged", instruction)
    assert proc.exception.code == NTSTATUS.STATUS_PRIVILEGED_INSTRUCTION
    assert proc.exit_status == 0xC0000096


@pytest.mark.parametrize("name, code, mnemonic", [
    ("illegal", NTSTATUS.STATUS_ILLEGAL_INSTRUCTION, "ud2"),
    ("divzero", NTSTATUS.STATUS_INTEGER_DIVIDE_BY_ZERO, "div"),
    ("breakpoint", NTSTATUS.STATUS_BREAKPOINT, "int3"),
])
def test_other_faults(machine_factory, apps, name, code, mnemonic):
    proc, _ = run_app(machine_factory, apps, name)
    assert proc.exception.code == code
    assert mnemonic in proc.exception.instruction
    assert b"after int3" not in proc.output


def test_non_canonical_address_is_an_access_violation(machine_factory, apps):
    proc, _ = run_app(machine_factory, apps, "noncanon")
    exc = proc.exception
    assert exc.code == AV and exc.address == 0xFFFF_FFFF_FFFF_FFFF
    assert "non-canonical" in exc.detail and "0x800000000000" in exc.detail


def test_stack_overflow_into_the_guard_page(machine_factory, apps):
    proc, _ = run_app(machine_factory, apps, "stackoverflow")
    exc = proc.exception
    assert exc.code == NTSTATUS.STATUS_STACK_OVERFLOW
    assert proc.stack_low - 4096 <= exc.address < proc.stack_low


def test_bad_pointers_to_a_system_call_return_a_status(machine_factory, apps):
    proc, _ = run_app(machine_factory, apps, "badptr")
    assert proc.output.decode().splitlines() == [
        "null: 0xc0000005",
        "kernel: 0xc0000005",
        "unmapped: 0xc0000005",
        "straddle: 0xc0000005",
        "huge: 0xc0000005",
        "still alive",
    ]
    assert proc.exit_status == 0 and proc.exception is None


def test_three_faulting_processes_in_a_row_then_a_healthy_one(machine_factory, apps):
    m = machine_factory()
    procs = [m.spawn(apps / n, a) for n, a in
             [("badread", []), ("divzero", []), ("privileged", ["hlt"]), ("breakpoint", []),
              ("hello", [])]]
    result = m.run()
    codes = [p.exception.code if p.exception else p.exit_status for p in procs]
    assert codes == [AV, NTSTATUS.STATUS_INTEGER_DIVIDE_BY_ZERO,
                     NTSTATUS.STATUS_PRIVILEGED_INSTRUCTION, NTSTATUS.STATUS_BREAKPOINT, 0]
    assert procs[-1].output == b"Hello, world!\n"
    assert result.bugcheck is None
    assert len({p.pid for p in procs}) == 5


def test_instruction_budget_stops_a_runaway(machine_factory, apps):
    proc, result = run_app(machine_factory, apps, "spin", max_insns=100_000)
    assert result.stopped == "instruction limit"
    assert result.stats.instructions == 100_000
    assert proc.exit_status is None and proc in result.unfinished


def test_counted_run_is_deterministic(machine_factory, apps):
    counts = []
    for _ in range(2):
        proc, result = run_app(machine_factory, apps, "hello", max_insns=10_000_000)
        counts.append((result.stats.instructions, result.stats.tlb_fills, bytes(proc.output)))
    assert counts[0] == counts[1] and counts[0][0] > 100


def test_frames_are_returned_when_processes_exit(machine_factory, apps):
    m = machine_factory()
    free_before = m.executive.mm.pfn.free_count
    for name in ("hello", "badread", "stackoverflow"):
        m.spawn(apps / name)
    m.run()
    assert m.executive.mm.pfn.free_count == free_before


def test_interrupt_from_another_thread_stops_the_machine(machine_factory, apps):
    import threading

    m = machine_factory()
    proc = m.spawn(apps / "spin")
    timer = threading.Timer(0.5, m.interrupt)
    timer.start()
    result = m.run()
    timer.join()
    assert result.stopped == "interrupted" and proc in result.unfinished


def test_a_failed_spawn_gives_back_every_frame(machine_factory, apps):
    from emu.nt.mm.pfn import OutOfFrames

    m = machine_factory(mem="1M")
    free = m.executive.mm.pfn.free_count
    with pytest.raises(OutOfFrames):
        m.spawn(apps / "sweep")
    assert m.executive.mm.pfn.free_count == free and m.processes == []
    hello = m.spawn(apps / "hello")                 # and the machine still works
    m.run()
    assert hello.output == b"Hello, world!\n"
