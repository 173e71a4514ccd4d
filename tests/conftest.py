"""Shared fixtures: the built guest apps and a machine factory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# pytest rewrites the asserts of each test module as it imports it, in every worker: about
# 3.5 s of CPU a process for this suite (parse, rewrite and compile 1.2 MB of tests). It keeps
# the result next to Python's own bytecode (tests/**/__pycache__/*-pytest-*.pyc, ignored by
# git) unless sys.dont_write_bytecode, which PYTHONDONTWRITEBYTECODE=1 sets in some
# environments: then every run paid it again. Allowed for the collection (the imports of the
# test modules), put back after it (pytest_collection_finish).
_DONT_WRITE_BYTECODE = sys.dont_write_bytecode
sys.dont_write_bytecode = False

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


# The longest test modules, longest first (about that many seconds each on one worker of
# `make test` on this 2-core machine, stop 17). `make test` hands whole modules to its workers
# (xdist --dist loadscope), the next one to whichever worker is nearly done, in collection
# order (--no-loadscope-reorder: xdist would otherwise order them by their number of tests,
# and the long modules with few tests would start last, one core idle while the other
# finishes one). Starting the long ones first (longest processing time first) ends both
# workers close together: what is left at the end are modules of a second or less. A module
# not named here keeps its place, after these.
LONGEST_FIRST = (
    "tests/test_wheel.py",                      # 16: a wheel built, installed, the tour played
    "tests/debugger/test_history_query.py",     # 10: the oracle runs (a hook on every access)
    "tests/debugger/test_history_calls.py",     # 9: the oracle runs (a hook on every insn)
    "tests/nt/test_counting.py",                # 7
    "tests/viz/test_steps_space.py",            # 7: the live map at every step; Chromium
    "tests/debugger/test_runctl.py",            # 6
    "tests/nt/test_service_args.py",            # 6: 241 cases
    "tests/test_cli.py",                        # 6
    "tests/nt/test_paging.py",                  # 6
    "tests/test_eventlog.py",                   # 5: the tour with its log
    "tests/scenarios/test_tour_cli.py",         # 5: the tour with its pages
    "tests/nt/test_kernel_fuzz.py",             # 5
    "tests/debugger/test_analyze_why.py",       # 5
    "tests/test_build.py",                      # 5
    "tests/scenarios/test_tour_html.py",        # 5: one Chromium lays out every page
    "tests/debugger/test_positions.py",         # 4
    "tests/debugger/test_shell.py",             # 4
    "tests/nt/test_pe_exports_io.py",           # 4
    "tests/hw/test_mmu.py",                     # 4
    "tests/viz/test_steppable.py",              # 4
    "tests/hw/test_mmu_qemu.py",                # 3
    "tests/debugger/test_ctrl_c.py",            # 3
    "tests/nt/test_random_code.py",             # 3
    "tests/debugger/test_gdbstub.py",           # 3
    "tests/nt/test_own_driver.py",              # 3
)


# Each worker imports every test module (xdist checks that they collected the same tests),
# and from a fresh clone nobody has rewritten them yet: the odd workers import the modules of
# each folder last to first, so that two workers rewrite half each and read the other half
# from __pycache__ (each writes what it rewrote, above), in about half the time. The order of
# the tests is then put back (pytest_collection_modifyitems): the same in every worker.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")         # gw0, gw1... (none: no xdist)
_REVERSED = _WORKER[2:].isdigit() and int(_WORKER[2:]) % 2 == 1
_PLACE: dict[str, int] = {}       # a folder's child -> its place in the folder's own order


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    """Note the place of each folder's children, and reverse them in the odd workers."""
    report = yield
    if isinstance(collector, pytest.Directory) and report.result:
        for i, child in enumerate(report.result):
            _PLACE[child.nodeid] = i
        if _REVERSED:
            report.result.reverse()
    return report


def _collected_order(item: pytest.Item) -> tuple[int, ...]:
    """Where ``item``'s module stands in the order the folders give (not the import order)."""
    return tuple(_PLACE.get(node.nodeid, 0) for node in item.listchain())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The modules of LONGEST_FIRST first, in its order; the rest after, in their order."""
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: (rank.get(item.nodeid.partition("::")[0], len(rank)),
                                 _collected_order(item)))


def pytest_collection_finish(session: pytest.Session) -> None:
    """The test modules are imported (and their rewritten code kept): back to the setting."""
    sys.dont_write_bytecode = _DONT_WRITE_BYTECODE
