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
