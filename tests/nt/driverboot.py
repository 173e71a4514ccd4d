"""Booting a machine with drivers and apps, shared by the driver tests."""

from __future__ import annotations

from pathlib import Path

DRIVERS = Path(__file__).resolve().parents[2] / "guest" / "build" / "drivers"


def boot(machine_factory, apps: Path, drivers, *commands, **options):
    """A machine with ``drivers`` (paths) loaded and one process per ``(app, *args)`` of
    ``commands``, run to its end: (machine, processes, run result)."""
    m = machine_factory(**options)
    for d in drivers:
        m.add_driver(d)
    procs = [m.spawn(apps / name, list(args)) for name, *args in commands]
    return m, procs, m.run()


def tlb_around(driver: str, argv: list[str], routine: str, tlb: str) -> tuple[str, list[str]]:
    """What a user tries under ``emu debug --driver DRIVER ARGV``: break in ``routine``,
    step to its third instruction, ``tlb`` there, step over it, ``tlb`` again, step back,
    ``tlb`` once more. Returns the whole transcript and the three views (each up to the
    next prompt)."""
    import emurun  # tests/emurun.py: emu in a fork of this process

    commands = [f"break {routine}", "continue", "stepi 2", tlb, "stepi", tlb,
                "reverse-stepi", tlb, "continue"]
    done = emurun.emu("debug", "--driver", driver, *argv, input="\n".join(commands) + "\n",
                      cwd=DRIVERS.parents[2], timeout=300)
    assert done.returncode == 0, done.stderr
    views = done.stdout.split(f"{tlb}\n")[1:]
    assert len(views) == 3, done.stdout
    return done.stdout, [v.split("\n(emu ")[0] for v in views]
