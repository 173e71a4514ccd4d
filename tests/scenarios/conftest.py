"""The tour played once per test session: every scenario, its result and facts."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tour(apps):
    """{name: ScenarioResult} for every registered scenario, played without narration."""
    from emu.scenarios.registry import all_scenarios
    from emu.scenarios.stage import play

    return {s.name: play(s) for s in all_scenarios()}
