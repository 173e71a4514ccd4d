"""bench/debugger.py drives `emu debug` as a user would: its measurements run end to end."""

from __future__ import annotations

from bench import debugger


def test_steps_and_reverse_latency_are_measured():
    rate, elapsed = debugger.steps_per_second(1, steps=20)
    assert rate > 0 and elapsed > 0
    assert debugger.reverse_latency(1, "--snapshot-interval", "500000") > 0


def test_the_snapshot_ring_reports_its_memory():
    kib = debugger.snapshot_memory()
    assert len(kib) == 8 and all(k > 0 for k in kib)


def test_continue_is_measured_against_a_counted_run_and_steps_back():
    rows = debugger.continue_rows(1)
    assert [name for name, *_ in rows] == [
        "debugger: continue 100 M in (time vs counted run)",
        "debugger: a continue counting nothing, its bound (time vs emu run)",
        "debugger: rsi 1 after that continue"]
    assert all(figure > 0 for _, figure, *_ in rows)
