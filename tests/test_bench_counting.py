"""`python -m bench --only counting`: the counting rows (issue 13), their five sides run
interleaved, each row with its target (figures are timings, never asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_only_counting_prints_the_four_counting_rows_with_their_targets():
    done = subprocess.run([sys.executable, "-m", "bench", "--only", "counting", "--repeat", "1",
                           "--iterations", "100000"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("--max-insns counted run (time vs free run, loop)")
    assert "target <= 1.5x" in lines[0] and "counted " in lines[0] and "free " in lines[0]
    assert lines[1].lstrip().startswith("floor: plain Unicorn + counting C block hook")
    assert lines[2].lstrip().startswith("--max-insns counted run (time vs the floor)")
    assert lines[3].lstrip().startswith("the same, every quantum ending inside a block")
    assert all("target info" in line for line in lines[1:])


def test_interleaved_medians_call_every_side_once_a_round_in_turn():
    sys.path.insert(0, str(ROOT))
    from bench.__main__ import interleaved_medians

    calls: list[str] = []

    def side(name: str, value: float):
        def fn() -> float:
            calls.append(name)
            return value + len(calls)
        return fn

    medians = interleaved_medians([side("a", 0.0), side("b", 100.0)], 3)
    assert calls == ["a", "b"] * 3
    assert medians == [3.0, 104.0]     # a: 1, 3, 5; b: 102, 104, 106
