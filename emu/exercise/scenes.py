"""The machine states exercises are asked about: real guests booted and run to a fixed point.

One state per kind, made once per command (and once per test session): the seeds of a kind
pick what to ask inside it. Every state is deterministic (time is counted in instructions),
so the same seed gives the same exercise on every run.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from emu.debugger.live import LiveTarget
from emu.exercise import SceneError
from emu.machine import Machine, MachineResult

GUEST_BUILD = Path(__file__).resolve().parents[2] / "guest" / "build"

# The address-space scene (translate, refuse): three apps with different layouts (a page
# committed at 0x7F7'93950000, a three-thread process with three stacks), stopped after
# this many instructions, when all three are alive.
SPACES_APPS = (("victim", ()), ("counter", ("a", "1000")), ("threads", ()))
SPACES_STOP = 400_000


@dataclass
class Scene:
    """A machine stopped at a known point, and the debugger's view of it."""

    machine: Machine
    result: MachineResult
    target: LiveTarget
    stop: int                    # instructions run when it stopped
    apps: tuple


def app_path(name: str) -> Path:
    """The built guest app ``name``; SceneError if the guests are not built."""
    path = GUEST_BUILD / "apps" / name
    if not path.is_file():
        raise SceneError(f"{path}: the guests are not built (run: make -C guest)")
    return path


@functools.cache
def spaces() -> Scene:
    """The address-space scene: SPACES_APPS run for SPACES_STOP instructions."""
    paths = [(app_path(name), args) for name, args in SPACES_APPS]
    machine = Machine("64M", max_insns=SPACES_STOP)
    for path, args in paths:
        machine.spawn(path, list(args))
    result = machine.run()
    if result.stopped != "instruction limit":
        raise SceneError(f"the address-space scene stopped early: {result.stopped}")
    return Scene(machine, result, LiveTarget(machine), SPACES_STOP, SPACES_APPS)
