"""Shared fixtures: the built guest apps and a machine factory."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
APPS = ROOT / "guest" / "build" / "apps"


@pytest.fixture(scope="session")
def apps() -> Path:
    """The directory of built guest apps (built on demand)."""
    if not (APPS / "hello").exists():
        subprocess.run(["make", "-s", "-C", str(ROOT / "guest")], check=True)
    return APPS


@pytest.fixture
def machine_factory():
    """Make machines and close them at the end of the test."""
    from emu import Machine

    made = []

    def make(**kwargs):
        m = Machine(**kwargs)
        made.append(m)
        return m

    yield make
    for m in made:
        m.close()
