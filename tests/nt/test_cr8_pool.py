"""CR8 moves in code a driver runs from pool (issue 12): the loader's scan sees only the
image's executable sections, so code copied into NonPagedPoolExecute at run time is looked
at as it runs (emu.hw.cr8, ``watch_range``). guest/drivers-pe/pecr8pool.c."""

from __future__ import annotations

from pathlib import Path

from emu.nt import layout

ROOT = Path(__file__).resolve().parents[2]
DRIVERS = ROOT / "guest" / "build" / "drivers"


def run(machine_factory, apps):
    m = machine_factory()
    m.add_driver(DRIVERS / "pecr8pool.sys")
    proc = m.spawn(apps / "hello", [])
    r = m.run()
    lines = [line[len("pecr8pool.sys: "):]
             for line in bytes(m.executive.debug_output).decode().splitlines()
             if line.startswith("pecr8pool.sys: ")]
    return m, proc, r, lines


def test_a_mov_cr8_in_executable_pool_sets_the_irql(machine_factory, apps):
    _, proc, r, lines = run(machine_factory, apps)
    assert r.bugcheck is None and proc.output == b"Hello, world!\n"
    head, tail = lines[0].split(" at ")
    address = int(tail.split()[0], 16)
    assert layout.KERNEL_POOL <= address < layout.KERNEL_POOL_NX      # NonPagedPool
    # `mov cr8, rax` in pool raised the IRQL (KeGetCurrentIrql, the header's read of CR8,
    # in the image) and the pool's own `mov rax, cr8` read it back.
    assert tail.split(" ", 1)[1] == "set CR8 to 2 and read 2 back"


def test_lowering_the_irql_from_pool_runs_the_dpc_queue(machine_factory, apps):
    _, _, r, lines = run(machine_factory, apps)
    assert lines[1:] == [
        "DPC queued at IRQL 2, ran 0 times",
        "DPC at IRQL 2",               # at the pool routine's `mov cr8`, before it returns
        "the pool routine lowered CR8 to 0 (read 0); the DPC ran 1 times",
    ]


def test_code_outside_the_watched_ranges_is_not_looked_at(machine_factory, apps):
    # Only executable pool and the MDL views are watched, and only once a driver is loaded:
    # a machine with no driver has no range hook.
    m = machine_factory()
    assert m.executive.cpu.cr8._ranges == set()
    m, _, _, _ = run(machine_factory, apps)
    assert m.executive.cpu.cr8._ranges == {
        (layout.KERNEL_POOL, layout.KERNEL_POOL_NX),
        (layout.KERNEL_SYSTEM_PTES, layout.KERNEL_SYSTEM_PTES + layout.KERNEL_POOL_SIZE)}


def test_a_reserved_cr8_bit_from_pool_is_gp_and_0x1e(machine_factory, apps):
    # #GP(0) at the pool's `mov cr8` (bits 63:4 reserved), CR8 unchanged. Code in pool is no
    # PE image, so nothing dispatches it: KMODE_EXCEPTION_NOT_HANDLED with Windows' code for
    # a #GP at CPL 0 (STATUS_ACCESS_VIOLATION, no address: -1), not ring 3's
    # STATUS_PRIVILEGED_INSTRUCTION.
    m = machine_factory()
    m.add_driver(DRIVERS / "pecr8poolgp.sys")
    m.spawn(apps / "hello", [])
    r = m.run()
    out = bytes(m.executive.debug_output).decode()
    address = int(out.split(" at ")[1].split()[0], 16)
    assert r.bugcheck.code == 0x1E
    # mov rax, rcx (3 bytes), then the move.
    assert r.bugcheck.params == (0xC0000005, address + 3, 0, 0xFFFF_FFFF_FFFF_FFFF)
    assert r.bugcheck.instruction == "mov cr8, rax"
    assert m.executive.irql == 0
    assert "not reached" not in out
