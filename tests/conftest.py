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


# The longest test modules, longest first (about that many seconds each in a serial run on
# this 2-core machine, stop 16). `make test` hands whole modules to its workers (xdist --dist
# loadscope), the next one to whichever worker is done first, in collection order
# (--no-loadscope-reorder: xdist would otherwise order them by their number of tests, and the
# long modules with few tests would start last, one core idle while the other finishes one).
# Starting the long ones first (longest processing time first) ends both workers close
# together. A module not named here keeps its place, after these.
LONGEST_FIRST = (
    "tests/test_eventlog.py",                   # 20: the tour twice
    "tests/test_wheel.py",                      # 17: a wheel built, installed, the tour played
    "tests/nt/test_paging.py",                  # 15
    "tests/scenarios/test_tour_cli.py",         # 15: the tour with its pages
    "tests/debugger/test_gdbstub.py",           # 15
    "tests/debugger/test_history_query.py",     # 14: the oracle runs (a hook on every access)
    "tests/test_cli.py",                        # 14
    "tests/nt/test_loader_fuzz.py",             # 14
    "tests/debugger/test_analyze_why.py",       # 12
    "tests/viz/test_steppable.py",              # 12
    "tests/nt/test_kernel_fuzz.py",             # 12
    "tests/nt/test_counting.py",                # 12
    "tests/debugger/test_shell.py",             # 11
    "tests/debugger/test_history_calls.py",     # 8
    "tests/scenarios/test_tour_html.py",        # 6: one Chromium lays out every page
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The modules of LONGEST_FIRST first, in its order; the rest after, in their order."""
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.partition("::")[0], len(rank)))
