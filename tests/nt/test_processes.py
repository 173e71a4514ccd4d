"""Several processes and threads at once: scheduling, isolation of crashes, handles, waits."""

from __future__ import annotations

import pytest

from emu.nt.ob import Event, HandleError
from emu.nt.status import NTSTATUS


def run(machine_factory, apps, *commands, **kwargs):
    m = machine_factory(**kwargs)
    procs = [m.spawn(apps / name, list(args)) for name, *args in commands]
    return m, procs, m.run()


def lines(proc) -> list[str]:
    return proc.output.decode().splitlines()


def test_two_counters_interleave_under_preemption(machine_factory, apps):
    _, (a, b), result = run(machine_factory, apps, ("counter", "a", "4"), ("counter", "b", "4"))
    assert lines(a) == [f"a {i}" for i in range(1, 5)]
    assert lines(b) == [f"b {i}" for i in range(1, 5)]
    assert a.exit_status == b.exit_status == 0
    assert result.stats.context_switches > 4          # they really took turns


def test_the_interleaving_follows_the_quantum(machine_factory, apps):
    order = []

    def console(proc, data):
        order.append(data.decode().strip())

    m = machine_factory(console=console)
    for name in "ab":
        m.spawn(apps / "counter", [name, "3"])
    m.run()
    assert order == ["a 1", "b 1", "a 2", "b 2", "a 3", "b 3"]


def test_one_runnable_thread_runs_at_full_speed(machine_factory, apps):
    _, (p,), result = run(machine_factory, apps, ("counter", "solo", "2"))
    assert p.exit_status == 0
    assert result.stats.instructions is None           # nothing was counted


@pytest.mark.parametrize("kind, status", [
    ("read", NTSTATUS.STATUS_ACCESS_VIOLATION), ("write0", NTSTATUS.STATUS_ACCESS_VIOLATION),
    ("exec", NTSTATUS.STATUS_ACCESS_VIOLATION), ("priv", NTSTATUS.STATUS_PRIVILEGED_INSTRUCTION),
    ("ud", NTSTATUS.STATUS_ILLEGAL_INSTRUCTION), ("div", NTSTATUS.STATUS_INTEGER_DIVIDE_BY_ZERO),
    ("int3", NTSTATUS.STATUS_BREAKPOINT),
])
def test_a_crash_leaves_the_other_process_running(machine_factory, apps, kind, status):
    _, (survivor, crasher), result = run(machine_factory, apps, ("counter", "s", "3"),
                                         ("crasher", kind), quantum=20_000)
    assert crasher.exception.code == status and crasher.exit_status == status
    assert lines(survivor) == ["s 1", "s 2", "s 3"] and survivor.exit_status == 0
    assert result.bugcheck is None and result.stopped is None


def test_threads_share_their_process_memory(machine_factory, apps):
    _, (p,), _ = run(machine_factory, apps, ("threads",))
    assert lines(p) == ["counter 100000", "thread 0 exit 10", "thread 1 exit 11"]
    assert p.threads_created == 3 and p.exit_status == 0


def test_preemption_between_load_and_store_loses_updates(machine_factory, apps):
    _, (p,), _ = run(machine_factory, apps, ("race",), quantum=10_000)
    counter, lost = (int(line.split()[1]) for line in lines(p))
    assert counter + lost == 100_000 and lost > 0


def test_a_fault_in_one_thread_ends_the_whole_process(machine_factory, apps):
    _, (p,), _ = run(machine_factory, apps, ("threadcrash",))
    assert p.exception.code == NTSTATUS.STATUS_ACCESS_VIOLATION
    assert "thread survived?!" not in p.output.decode()
    assert all(t.exit_status == p.exit_status for t in p.threads)


def test_an_event_wakes_a_waiting_thread(machine_factory, apps):
    _, (p,), _ = run(machine_factory, apps, ("waiter",))
    assert lines(p) == ["thread waiting", "main setting event", "thread woke", "thread exit 7"]


def test_sleep_and_timeouts_on_the_instruction_clock(machine_factory, apps):
    m, (p,), _ = run(machine_factory, apps, ("sleeper", "5000000"))
    assert lines(p) == ["before", "after", "poll 0x00000102", "timed 0x00000102"]
    assert m.executive.clock >= 5_000_000              # the idle time was skipped, not spent


def test_a_child_process_from_the_guest_file_system(machine_factory, apps):
    _, (parent,), _ = run(machine_factory, apps, ("spawner", "exitcode", "9"))
    assert lines(parent) == ["spawned exitcode", "exitcode exited 0x00000009"]


def test_a_crashing_child_reports_its_exception_to_the_parent(machine_factory, apps):
    m, (parent,), _ = run(machine_factory, apps, ("spawner", "badread"))
    child = m.processes[1]
    assert child.parent_pid == parent.pid and child.name == "badread"
    assert lines(parent)[-1] == "badread exited 0xc0000005"


def test_a_missing_child_image_is_a_status(machine_factory, apps):
    _, (parent,), _ = run(machine_factory, apps, ("spawner", "../../../etc/passwd"))
    assert lines(parent) == ["create failed 0xc0000034"] and parent.exit_status == 1


def test_handles_are_private_to_their_process(machine_factory, apps):
    m = machine_factory()
    a = m.spawn(apps / "hello")
    b = m.spawn(apps / "hello")
    value = a.handles.insert(Event(manual_reset=True, state=False))
    assert a.handles.lookup(value)
    with pytest.raises(HandleError) as info:
        b.handles.lookup(value)
    assert info.value.status == NTSTATUS.STATUS_INVALID_HANDLE


def test_handle_values_from_another_process_are_invalid(machine_factory, apps):
    _, (p,), _ = run(machine_factory, apps, ("handles", "4"))
    assert lines(p) == ["event handle 4", "duplicate 8", "close again 0xc0000008",
                        "wait closed 0xc0000008", "foreign 0xc0000008"]
    assert len(p.handles) == 0                         # the table died with the process


def test_reading_a_file_of_the_guest_file_system(machine_factory, apps):
    _, (p,), _ = run(machine_factory, apps, ("reader", "hello"))
    data = (apps / "hello").read_bytes()
    assert lines(p) == [f"read {len(data)} bytes", f"sum {sum(data)}", "bad buffer 0xc0000005"]


def test_deadlock_stops_the_machine(machine_factory, apps):
    _, (p,), result = run(machine_factory, apps, ("deadlock",))
    assert result.stopped == "deadlock" and p in result.unfinished
    assert lines(p) == ["waiting forever"]


def test_same_run_same_interleaving_and_counts(machine_factory, apps):
    outcomes = []
    for _ in range(2):
        order = []
        m = machine_factory(console=lambda proc, data, order=order: order.append(
            (proc.pid, bytes(data))), quantum=7_000)
        for name, args in [("race", []), ("counter", ["x", "3", "3000"]), ("yielder", ["50"])]:
            m.spawn(apps / name, args)
        r = m.run()
        outcomes.append((order, r.stats.context_switches, r.stats.tlb_fills,
                         [(p.exit_status, p.instructions) for p in r.processes]))
    assert outcomes[0] == outcomes[1]


def test_everything_is_given_back_when_all_processes_end(machine_factory, apps):
    m = machine_factory()
    free = m.executive.mm.pfn.free_count
    for name, args in [("threads", []), ("spawner", ["hello"]), ("threadcrash", []),
                       ("waiter", [])]:
        m.spawn(apps / name, args)
    m.run()
    assert m.executive.mm.pfn.free_count == free


def test_no_address_in_one_process_reaches_anothers_frames(machine_factory, apps):
    """At every switch, walk every user page of every live process: each frame belongs to
    that process, and no frame is mapped by two processes."""
    m = machine_factory(quantum=5_000)
    # Every switch through _run_thread: none handed over inside the SYSCALL hook.
    m.executive.switch_at_syscall = False
    for name, args in [("counter", ["a", "3"]), ("counter", ["b", "3"]), ("threads", [])]:
        m.spawn(apps / name, args)
    pfn = m.executive.mm.pfn
    original = m.executive._run_thread
    moments = []

    def run_thread(thread):
        owner_of: dict[int, int] = {}
        for proc in m.processes:
            if not proc.live_threads:
                continue
            for mapping in proc.space.user_mappings():
                assert pfn.entries[mapping.pfn].owner == proc.pid, hex(mapping.va)
                assert owner_of.setdefault(mapping.pfn, proc.pid) == proc.pid
        moments.append(len(owner_of))
        original(thread)

    m.executive._run_thread = run_thread
    m.run()
    assert len(moments) > 3 and max(moments) > 200


def test_the_console_is_an_object_reached_through_a_handle(machine_factory, apps):
    _, (p,), _ = run(machine_factory, apps, ("console",))
    assert lines(p) == ["through the console handle", "through its duplicate",
                        "closed write 0xc0000008", "file write 0xc0000022"]


def test_objects_die_with_their_last_handle(machine_factory, apps):
    m = machine_factory()
    for name in ("console", "waiter", "handles", "threads"):
        m.spawn(apps / name)
    seen = []
    m.executive.exit_observers.append(lambda proc: seen.append(len(m.executive.objects.live())))
    m.run()
    assert max(seen) > 0                       # while processes ran, objects were alive
    assert m.executive.objects.live() == []    # every handle closed or its process gone


def test_a_process_that_exits_with_open_handles_releases_them(machine_factory, apps):
    from emu.nt.ob import Event

    m = machine_factory()
    p = m.spawn(apps / "hello")
    event = Event(manual_reset=True, state=False)
    m.executive.objects.created(event)
    p.handles.insert(event)
    m.run()
    assert len(p.handles) == 0 and event.handle_count == 0
    assert event not in m.executive.objects.live()
