"""Paging figures for ``make bench``: fault round trips, the cost of too little RAM, and how
good the clock is next to FIFO and Belady's optimal policy.

The policy comparison records a workload's reference string on the machine (every data
access of the app, as a page number, with runs of the same page collapsed: a repeated
reference never faults and changes no policy's state), then replays it offline through
each policy with the same number of frames: the peak working set the app had on the
real machine. The machine's own hard faults are printed beside them.
"""

from __future__ import annotations

import heapq
from collections import deque
from pathlib import Path

from unicorn import UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE

from emu import Machine

ROOT = Path(__file__).resolve().parent.parent
APPS = ROOT / "guest" / "build" / "apps"


def fifo_faults(refs: list[int], frames: int) -> int:
    """Faults of first-in first-out replacement."""
    resident: set[int] = set()
    order: deque[int] = deque()
    faults = 0
    for page in refs:
        if page in resident:
            continue
        faults += 1
        if len(resident) == frames:
            resident.discard(order.popleft())
        resident.add(page)
        order.append(page)
    return faults


def clock_faults(refs: list[int], frames: int) -> int:
    """Faults of the clock (second chance): a hit sets the page's reference bit; the hand
    clears set bits as it passes and replaces the first page whose bit is clear."""
    slots: list[int] = []
    referenced: list[bool] = []
    where: dict[int, int] = {}
    hand = faults = 0
    for page in refs:
        at = where.get(page)
        if at is not None:
            referenced[at] = True
            continue
        faults += 1
        if len(slots) < frames:
            where[page] = len(slots)
            slots.append(page)
            referenced.append(True)
            continue
        while referenced[hand]:
            referenced[hand] = False
            hand = (hand + 1) % frames
        del where[slots[hand]]
        slots[hand], referenced[hand], where[page] = page, True, hand
        hand = (hand + 1) % frames
    return faults


def optimal_faults(refs: list[int], frames: int) -> int:
    """Faults of Belady's MIN: replace the page whose next use is farthest away (known
    offline only, so the lower bound for any policy)."""
    never = len(refs)
    next_use = [never] * len(refs)
    seen: dict[int, int] = {}
    for i in range(len(refs) - 1, -1, -1):
        next_use[i] = seen.get(refs[i], never)
        seen[refs[i]] = i
    resident: dict[int, int] = {}            # page -> its next use
    heap: list[tuple[int, int]] = []         # (-next use, page), stale entries skipped
    faults = 0
    for i, page in enumerate(refs):
        if page not in resident:
            faults += 1
            if len(resident) == frames:
                while True:
                    use, victim = heapq.heappop(heap)
                    if resident.get(victim) == -use:
                        del resident[victim]
                        break
        resident[page] = next_use[i]
        heapq.heappush(heap, (-next_use[i], page))
    return faults


def record(app: str, args: list[str], mem: str) -> tuple[list[int], int, int, int]:
    """Run ``app`` on a ``mem`` machine recording its data references: (reference string,
    the app's peak working set, its faults that brought a page in (hard, soft and demand
    zero: what the offline policies count), its hard faults)."""
    m = Machine(mem)
    refs: list[int] = []
    entries = m.executive.mm.pfn.entries

    def on_access(_uc, _access, address, _size, _value, _data):
        # With UC_TLB_VIRTUAL, Unicorn hands memory hooks the *physical* address: the PFN
        # database says which virtual page the frame backs (and for whom).
        entry = entries[address >> 12] if address < m.mem.size else None
        if entry is not None and entry.owner == proc.pid and entry.va is not None:
            page = entry.va >> 12
            if not refs or refs[-1] != page:
                refs.append(page)

    try:
        proc = m.spawn(APPS / app, args)
        m.executive.cpu.uc.hook_add(UC_HOOK_MEM_READ | UC_HOOK_MEM_WRITE, on_access)
        m.run()
        if proc.exit_status != 0:
            raise SystemExit(f"bench: {app} failed: {proc.exception or proc.exit_status}")
        c = proc.working_set.counters
        return (refs, proc.working_set.peak, c.hard_faults + c.soft_faults + c.demand_zero_faults,
                c.hard_faults)
    finally:
        m.close()


def policy_rows() -> list[tuple[str, str]]:
    """(workload, 'machine N, clock N, FIFO N, optimal N') for the two workloads."""
    rows = []
    for name, app, args in (("sequential rereads", "reread", ["2"]),
                            ("hot set + cold scan", "hotcold", ["96", "2048", "128"])):
        refs, frames, machine, hard = record(app, args, "2M")
        rows.append((f"{name} ({len(refs)} refs, {frames} frames)",
                     f"machine {machine} ({hard} hard), clock {clock_faults(refs, frames)}, "
                     f"FIFO {fifo_faults(refs, frames)}, "
                     f"optimal {optimal_faults(refs, frames)}"))
    return rows
