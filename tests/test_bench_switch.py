"""`python -m bench --only switch`: the two rows a context switch decides, each with its
target, without the rest of the bench (figures are timings, never asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_only_switch_prints_the_two_switch_rows_with_their_targets():
    done = bench("--only", "switch", "--repeat", "1", "--iterations", "1000000")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("two processes, default quantum (time vs 2 x one alone)")
    assert "target <= 1.5x" in lines[0]
    assert lines[1].startswith("context switches per second (two yielders)")
    assert "target >= 50000" in lines[1] and " in " in lines[1] and "us each)" in lines[1]


def test_a_bad_repeat_or_row_is_one_line_and_exit_status_2():
    for args in (("--repeat", "0"), ("--only", "sweep")):
        done = bench(*args)
        assert done.returncode == 2 and done.stdout == ""
        assert "Traceback" not in done.stderr and done.stderr.strip().splitlines()[-1] \
            .startswith("python -m bench: error:")
