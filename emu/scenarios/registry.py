"""The scenarios of the tour, by name, in the seed's order.

Each scenario module registers its scenarios with the ``scenario`` decorator; ``ORDER``
fixes the order of ``emu scenario list`` and ``--all`` (the order the seed makes its
claims), and a test checks that every name in it is registered and nothing else is.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from emu.scenarios.stage import Stage

ORDER = (
    "private-address-spaces",
    "private-handles",
    "app-crash-is-contained",
    "kernel-addresses-are-protected",
    "privileged-instructions",
    "driver-crash-is-fatal",
    "shared-kernel-space",
    "arbitrary-thread-context",
    "paging-to-disk",
    "address-limits",
)
MODULES = ("spaces", "isolation", "drivers", "context")


@dataclass(frozen=True)
class Scenario:
    """One claim of the seed, shown on a live machine."""

    name: str
    title: str                       # one line for `emu scenario list`
    claim: str                       # the seed's words
    sources: tuple[str, ...]         # guest sources involved, relative to the repository
    play: Callable[[Stage], None]    # boots the acts, narrates, checks


REGISTRY: dict[str, Scenario] = {}


def scenario(name: str, title: str, claim: str,
             sources: tuple[str, ...]) -> Callable[[Callable[[Stage], None]], Callable]:
    """Register the decorated ``play(stage)`` function as scenario ``name``."""
    def register(play: Callable[[Stage], None]) -> Callable[[Stage], None]:
        if name in REGISTRY:
            raise ValueError(f"scenario {name!r} is registered twice")
        REGISTRY[name] = Scenario(name, title, claim, sources, play)
        return play
    return register


def load() -> None:
    """Import every scenario module (each registers its scenarios once)."""
    for module in MODULES:
        importlib.import_module(f"emu.scenarios.{module}")


def all_scenarios() -> list[Scenario]:
    """Every registered scenario, in tour order (unlisted extras last, by name)."""
    load()
    extras = sorted(set(REGISTRY) - set(ORDER))
    return [REGISTRY[name] for name in (*ORDER, *extras) if name in REGISTRY]


def find(name: str) -> Scenario | None:
    """The scenario called ``name``, or None."""
    load()
    return REGISTRY.get(name)
