"""`make bench`'s trap-path rows (bench/traps.py): each issue-13 figure printed with its target.
The figures themselves are timings, never asserted; what is checked is that each row is there,
measured on a run that did what it should, with the target the issue sets."""

from __future__ import annotations

from bench import traps


def test_each_trap_figure_has_its_target_and_counts_real_events():
    rows = {name: (figure, target, ok, detail, unit)
            for name, figure, target, ok, detail, *unit in traps.rows(1)}
    assert {name: rows[name][1] for name in rows} == {
        "system call round trip (vs Python hook on flat Unicorn)": "<= 2x",
        "demand-zero faults per second (pattern 16 MiB)": ">= 20000",
        "hard faults per second (reread 4 MiB in 2 MiB)": ">= 10000",
        "context switches per second (two yielders)": ">= 50000",
    }
    for figure, _target, ok, _detail, _unit in rows.values():
        assert figure > 0 and isinstance(ok, bool)
    assert rows["demand-zero faults per second (pattern 16 MiB)"][3].startswith("4096 in ")
    assert rows["hard faults per second (reread 4 MiB in 2 MiB)"][4] == ["/s"]


def test_the_events_behind_the_rates():
    _, faults, _ = traps.demand_zero_rate()
    assert faults == 4096                        # 16 MiB of new pages
    _, hard, _ = traps.hard_fault_rate()
    assert hard >= 1024                          # the second pass reads every page back
    _, switches, _ = traps.context_switch_rate(100)
    assert switches >= 200                       # two yielders: about 2N switches
