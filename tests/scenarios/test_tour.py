"""Every scenario of the tour, its claim asserted from the machine's state (the facts each
scenario collected from page tables, the PFN database, exit statuses, bug check
parameters, guest memory), never from the narration."""

from __future__ import annotations

import re
from itertools import pairwise

import pytest

from emu.hw.exceptions import Vector
from emu.hw.mmu import PTE, PFErr
from emu.nt.bugcheck import BugCheckCode
from emu.nt.layout import KERNEL_SPACE_START
from emu.nt.status import NTSTATUS
from emu.scenarios import registry
from emu.scenarios.registry import ORDER, Scenario, all_scenarios
from emu.scenarios.spaces import page_words
from emu.scenarios.stage import Stage, failures, play


def test_every_listed_scenario_is_registered_and_in_the_seed_order():
    assert [s.name for s in all_scenarios()] == list(ORDER)
    for s in all_scenarios():
        assert s.claim and s.title and s.sources


@pytest.mark.parametrize("name", ORDER)
def test_scenario_holds_its_claim(tour, name):
    result = tour[name]
    assert result.error is None
    assert result.checks, "a scenario must check something"
    assert result.ok, failures(result)


def test_private_address_spaces(tour):
    facts = tour["private-address-spaces"].facts
    note, mine = facts["frames"]["notepad"], facts["frames"]["myapp"]
    assert len(note) == len(mine) == 3 and not set(note) & set(mine)
    assert facts["contents"]["notepad"] == ["notepad page 0", "notepad page 1", "notepad page 2"]
    assert facts["contents"]["myapp"] == ["myapp page 0", "myapp page 1", "myapp page 2"]
    assert any(b != a + 1 for a, b in pairwise(note))
    assert facts["exit_statuses"] == {"notepad": 0, "myapp": 0}


def test_private_handles(tour):
    facts = tour["private-handles"].facts
    assert facts["handle"] == 4
    assert (facts["named_in_owner"], facts["named_in_other"]) == ("an Event", "nothing")
    assert facts["result"] == NTSTATUS.STATUS_INVALID_HANDLE
    assert facts["event_state"] == (False, False)
    assert facts["outputs"]["handles"].endswith("foreign 0xc0000008\n")


def test_app_crash_is_contained(tour):
    facts = tour["app-crash-is-contained"].facts
    assert facts["crasher_status"] == NTSTATUS.STATUS_ACCESS_VIOLATION
    assert (facts["access"], facts["address"]) == ("write", 0)
    assert facts["counter_outputs"] == ["a 1\na 2\na 3\n", "b 1\nb 2\nb 3\n"]
    assert facts["lines_after_crash"] and facts["frames_kept"] == 0
    assert facts["bugcheck"] is None and facts["stopped"] is None


def test_kernel_addresses_are_protected(tour):
    facts = tour["kernel-addresses-are-protected"].facts
    assert {n: p[0] for n, p in facts["params"].items()} == {"badread": 0, "kwrite": 1,
                                                             "kexec": 8}
    assert all(p[1] >= KERNEL_SPACE_START for p in facts["params"].values())
    for exc in facts["faults"].values():
        assert exc.vector == Vector.PF and exc.error_code & (PFErr.P | PFErr.U) == \
            PFErr.P | PFErr.U
        assert all(step.value & PTE.P for step in exc.walk)
        assert not exc.walk[0].value & PTE.US        # the PML4E of the kernel half
    before, after = facts["gdt"]
    assert before == after and after != b"\x41\x41\x41\x41\0\0\0\0"


def test_privileged_instructions(tour):
    facts = tour["privileged-instructions"].facts
    assert facts["statuses"] == {"cli": NTSTATUS.STATUS_PRIVILEGED_INSTRUCTION,
                                 "hlt": NTSTATUS.STATUS_PRIVILEGED_INSTRUCTION,
                                 "mov-cr3": NTSTATUS.STATUS_PRIVILEGED_INSTRUCTION, "c": 0}
    assert all(exc.vector == Vector.GP and exc.cpl == 3
               for exc, _ in facts["exceptions"].values())
    assert facts["cr3_loads"] <= facts["legal_cr3"] and 0 not in facts["cr3_loads"]


def test_driver_crash_is_fatal(tour):
    facts = tour["driver-crash-is-fatal"].facts
    app, bc = facts["app_exception"], facts["bugcheck"]
    assert (app.access, app.address) == ("write", 0) and facts["first_stopped"] is None
    assert bc.code == BugCheckCode.PAGE_FAULT_IN_NONPAGED_AREA
    assert bc.params[:2] == (0, 2) and bc.driver == "neither.sys"
    assert facts["stopped"] == "bug check"
    assert all(state != "terminated" for _, _, state, _ in facts["processes_at_stop"])
    assert [len(o.splitlines()) for n, _, _, o in facts["processes_at_stop"]
            if n == "counter"] != [8, 8]


def test_shared_kernel_space(tour):
    facts = tour["shared-kernel-space"].facts
    alone, both = facts["alone"], facts["both"]
    assert alone["writes"] == () and alone["counter_at_start"] == 1000
    target = both["counter_pa"]
    assert [r for r in both["writes"] if r.pa <= target < r.pa + len(r.data)]
    assert both["counter_at_start"] == 0 and both["bugcheck"] is None
    assert [o.splitlines()[-1] for o in alone["outputs"]] == ["data: ticket 1000",
                                                              "data: ticket 1001"]
    assert [o.splitlines()[-1] for o in both["outputs"]] == ["data: ticket 0", "data: ticket 1"]
    assert set(both["counter_pa_by_process"].values()) == {target}


def test_arbitrary_thread_context(tour):
    facts = tour["arbitrary-thread-context"].facts
    n, b, d = facts["neither"], facts["buffered"], facts["direct"]
    for f in (n, b, d):
        assert f["interrupted"] == [f["victim"]] and f["dpc_cr3"] == f["victim_cr3"]
    data = [r for r in n["runs"] if r.data.startswith(b"data from the slow device")]
    assert data and data[0].owner == n["victim"] and data[0].va == 0x7F7_93950000
    assert n["requester_page"] == "requester's own page"
    assert n["victim_page"] == "data from the slow device"
    assert b["runs"] and all(r.owner is None for r in b["runs"])
    assert b["requester_page"] == "data from the slow device"
    assert d["runs"][0].owner == d["requester"] and d["runs"][0].va >= KERNEL_SPACE_START
    assert d["victim_page"] == b["victim_page"] == "victim's own data, nobody else's"


def test_paging_to_disk(tour):
    facts = tour["paging-to-disk"].facts
    assert facts["committed"] == 8 << 20
    assert facts["paging"]["pages_written"] > 0 and facts["paging"]["hard_faults"] > 0
    assert [t["back"][1] for t in facts["tracked"].values()] == [True, True]
    assert all(t["slot"] > 0 for t in facts["tracked"].values())
    assert all(o.endswith(", 0 bad words\n") for o in facts["outputs"])


def test_page_words_is_what_pattern_writes():
    # `emu run guest/build/apps/pattern 1 1` prints this checksum: the sum of its words.
    assert sum(page_words(1, 0, 131072)) % (1 << 64) == 0xC9B55D9F25AEE072


def test_address_limits(tour):
    facts = tour["address-limits"].facts
    assert {(b, h) for _, b, h in facts["small"]} == {(32, 0x7FFE_FFFF)}
    assert 0 < facts["top32"] < 0x8000_0000
    assert facts["refused"] == [NTSTATUS.STATUS_INVALID_PARAMETER]
    assert facts["touch"].address == 0x8000_0000
    assert {(b, h) for _, b, h in facts["large"]} == {(64, 0x7FFF_FFFE_FFFF)}
    assert facts["top_down"] == [0x7FFF_FFFE_0000]
    assert "non-canonical address 0x800000000000" in facts["noncanon"].detail


def test_narration_is_deterministic(apps):
    scenario = registry.find("arbitrary-thread-context")
    assert play(scenario).lines == play(scenario).lines


def test_a_claim_that_does_not_hold_fails_loudly():
    def play_it(stage: Stage) -> None:
        with stage.act("hello", apps=[("hello",)]) as act:
            act.run()
            status = act.procs[0].exit_status
        stage.check("hello exits with status 7", status == 7, f"exit status {status}")

    result = play(Scenario("broken", "a claim that is false", "-", (), play_it))
    assert not result.ok
    assert failures(result) == ["hello exits with status 7: observed exit status 0"]


def test_a_scenario_that_breaks_is_a_failure_not_a_traceback():
    def play_it(stage: Stage) -> None:
        with stage.act("missing", apps=[("no-such-app",)]) as act:
            act.run()

    result = play(Scenario("missing", "a guest that is not built", "-", (), play_it))
    assert not result.ok and "no-such-app: no such file" in result.error


def test_no_narration_line_repeats_a_word(tour):
    doubled = [(name, line) for name, result in tour.items() for line in result.lines
               if re.search(r"\b([A-Za-z]+)[,;:]? \1\b", line)]
    assert doubled == []


def test_a_hard_fault_names_its_frame_once(tour):
    lines = [line for line in tour["paging-to-disk"].lines if "a hard fault reads it back" in line]
    assert lines and all(re.search(r"reads it back into frame 0x[0-9a-f]+$", line)
                         for line in lines)


def test_two_processes_are_both_not_all_2(tour):
    lines = [line for result in tour.values() for line in result.lines]
    assert not [line for line in lines if re.search(r"\ball 2\b", line)]
    assert any("in both processes' PML4s: one shared kernel space" in line for line in lines)
