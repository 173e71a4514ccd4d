"""Shared by the state-view tests: a shell harness over StateCommands, and machines stopped
in known states (paused inside an event observer, as the debugger pauses, or stopped by
an instruction budget with every process alive)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from shellharness import Harness  # noqa: F401 - the state tests import it from here

from emu import Machine
from emu.nt.events import Event

ROOT = Path(__file__).resolve().parents[2]
APPS = ROOT / "guest" / "build" / "apps"
DRIVERS = ROOT / "guest" / "build" / "drivers"
MARKERS = 0x7F7_93950000          # where notepad and myapp keep their three marked pages
SYSCALL_YIELD = 0x06              # NtYieldExecution


class Paused(Exception):
    """Raised by an observer to end the run where the test wanted to look."""


def machine(*apps: tuple[str, list[str]] | str, drivers: tuple[str, ...] = (),
            **kwargs: Any) -> Machine:
    """A machine with ``drivers`` loaded and ``apps`` spawned (a bare name: no arguments)."""
    m = Machine(kwargs.pop("mem", "64M"), **kwargs)
    for d in drivers:
        m.add_driver(DRIVERS / d)
    for app in apps:
        name, args = (app, []) if isinstance(app, str) else app
        m.spawn(APPS / name, args)
    return m


def pause(m: Machine, when: Callable[[Event, dict], bool], work: Callable[[dict], Any]) -> Any:
    """Run ``m`` until ``when(event, details)``; return ``work(details)``, computed right
    there, inside the observer, with the machine paused (as the debugger pauses)."""
    found: dict[str, Any] = {}

    def observer(event: Event, details: dict) -> None:
        if "result" not in found and when(event, details):
            found["result"] = work(details)
            raise Paused

    m.executive.events.subscribe(observer)
    try:
        m.run()
    except Paused:
        pass
    finally:
        m.executive.events.unsubscribe(observer)
    assert "result" in found, "the machine never reached the pause"
    return found["result"]


def two_processes() -> Machine:
    """notepad and myapp stopped by an instruction budget, both alive, each with its three
    marked pages written at the same virtual address (the seed's picture)."""
    m = machine("notepad", "myapp", max_insns=20_000)
    assert m.run().stopped == "instruction limit"
    return m


def pid_of(m: Machine, name: str) -> int:
    """The pid of the process called ``name``."""
    return next(p.pid for p in m.processes if p.name == name)
