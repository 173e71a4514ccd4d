"""Scenarios about virtual address spaces: private, larger than RAM, and limited.

    private-address-spaces   notepad and myapp at 0x7F7'93950000: different frames
    paging-to-disk           more memory than RAM: pages go to the pagefile and come back
    address-limits           a 32-bit process ends at 2 GB, a 64-bit one at 128 TB
"""

from __future__ import annotations

import struct
from itertools import pairwise
from typing import Any

from emu.fmt import addr
from emu.hw.memory import parse_size
from emu.nt.events import Event
from emu.nt.layout import (
    MM_HIGHEST_USER_ADDRESS,
    MM_HIGHEST_USER_ADDRESS_32,
    PAGE_SIZE,
    USER_SPACE_END,
)
from emu.nt.mm import softpte
from emu.nt.mm.virtual import AllocationType, FaultResolution
from emu.nt.status import NTSTATUS
from emu.nt.syscalls import Service
from emu.scenarios import describe
from emu.scenarios.args import pointer
from emu.scenarios.describe import size
from emu.scenarios.registry import scenario
from emu.scenarios.stage import Act, Stage, hexes, output
from emu.scenarios.watch import read_user

SEED_VA = 0x7F7_93950000            # the address of the seed's picture
THREE = (SEED_VA, SEED_VA + 3 * PAGE_SIZE)


@scenario(
    "private-address-spaces",
    "notepad and myapp at 0x7F7'93950000: same addresses, different frames",
    "Each user-mode process has its own private virtual address space. ... The Notepad "
    "process uses three contiguous pages of virtual addresses, starting at 0x7F7'93950000. "
    "However, these three contiguous pages of virtual addresses map to noncontiguous pages "
    "in physical memory. Also, both processes use a page of virtual memory beginning at "
    "0x7F7'93950000, but these virtual pages map to different pages of physical memory.",
    ("guest/apps/notepad.c", "guest/apps/myapp.c", "guest/apps/three_pages.h"))
def private_address_spaces(stage: Stage) -> None:
    """Two processes write their markers at the same three virtual pages."""
    frames: dict[str, list[int]] = {}
    contents: dict[str, list[str]] = {}
    with stage.act("notepad and myapp, three pages each at 0x7f7'93950000",
                   apps=[("notepad",), ("myapp",)], focus=[THREE],
                   syscalls=[Service.NtAllocateVirtualMemory], fault_ranges=[THREE]) as act:
        def at_exit(proc) -> None:       # the last moment its page tables exist
            frames[proc.name] = [proc.space.lookup(va).pfn for va in _three()]
            contents[proc.name] = [(read_user(proc, va, 16) or b"").split(b"\0")[0].decode()
                                   for va in _three()]
        act.machine.executive.exit_observers.append(at_exit)
        act.run()
        procs = act.procs
    stage.facts.update(frames=frames, contents=contents,
                       exit_statuses={p.name: p.exit_status for p in procs})
    note, mine = frames.get("notepad", []), frames.get("myapp", [])
    stage.check("Both processes use the same three virtual pages at 0x7F7'93950000, but the "
                "page tables map them to different physical frames",
                len(note) == len(mine) == 3 and not set(note) & set(mine),
                f"notepad -> frames {hexes(note)}; myapp -> frames {hexes(mine)}")
    stage.check("Neither process sees the other's data: each page holds its own marker",
                contents.get("notepad") == [f"notepad page {i}" for i in range(3)] and
                contents.get("myapp") == [f"myapp page {i}" for i in range(3)] and
                all(p.exit_status == 0 for p in procs),
                f"notepad's pages hold {contents.get('notepad')}, myapp's "
                f"{contents.get('myapp')}; exit statuses "
                f"{[p.exit_status for p in procs]}")
    stage.check("Three contiguous virtual pages sit on non-contiguous physical frames",
                len(note) == 3 and any(b != a + 1 for a, b in pairwise(note)),
                f"notepad's 0x7f7'93950000, ...1000, ...2000 -> frames {hexes(note)}")


def _three() -> list[int]:
    return [SEED_VA + i * PAGE_SIZE for i in range(3)]


def page_words(seed: int, first_word: int, count: int) -> list[int]:
    """What guest/apps/pattern.c stores in words ``first_word``...: splitmix64's finalizer
    of ``seed << 32 | i`` (the formula in its header comment)."""
    mask = (1 << 64) - 1
    out = []
    for i in range(first_word, first_word + count):
        z = ((seed << 32) | i) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        out.append(z ^ (z >> 31))
    return out


MEM_TOP_DOWN = AllocationType.MEM_TOP_DOWN
PATTERN_MIB = 4
PAGING_RAM = "2M"
PAGING_QUANTUM = 2_000_000       # long turns: a readable timeline (the default is 100,000)


@scenario(
    "paging-to-disk",
    "two processes use 8 MiB in 2 MiB of RAM: pages go to the pagefile and come back",
    "A program can use a range of virtual addresses to access a memory buffer larger than "
    "the available physical memory. When physical memory is low, the memory manager saves "
    "pages of physical memory (typically 4 kilobytes in size) to a disk file. The system "
    "moves pages of data or code between physical memory and the disk as needed.",
    ("guest/apps/pattern.c", "guest/apps/paging.h"))
def paging_to_disk(stage: Stage) -> None:
    """Two `pattern 4` processes in 2 MiB: each writes 4 MiB, then checks every word."""
    tracked: dict[int, dict[str, Any]] = {}
    with stage.act(f"two pattern processes of {PATTERN_MIB} MiB each in "
                   f"{size(parse_size(PAGING_RAM))} of RAM",
                   apps=[("pattern", str(PATTERN_MIB), "1"), ("pattern", str(PATTERN_MIB), "2")],
                   mem=PAGING_RAM, quantum=PAGING_QUANTUM,
                   syscalls=[Service.NtAllocateVirtualMemory],
                   dispatches=False) as act:
        act.on_event(_PageTracker(act, tracked))
        result = act.run()
        procs = act.procs
        outputs = [output(p) for p in procs]
    paging = result.stats.paging
    committed = sum(t.get("size", 0) for t in tracked.values())
    stage.facts.update(tracked=tracked, paging=paging, committed=committed, outputs=outputs,
                       exit_statuses=[p.exit_status for p in procs])
    ram = parse_size(PAGING_RAM)
    stage.check(f"The processes use more memory than the machine has: {size(committed)} "
                f"committed in {size(ram)} of RAM",
                committed > ram, f"committed {size(committed)}; RAM {size(ram)}")
    stage.check("Pages went to the pagefile and came back",
                paging.get("pages_written", 0) > 0 and paging.get("hard_faults", 0) > 0,
                f"{paging.get('pages_written', 0)} pages written to the pagefile, "
                f"{paging.get('hard_faults', 0)} hard faults read pages back, "
                f"{paging.get('trims', 0)} pages trimmed from working sets")
    back = [t for t in tracked.values() if t.get("back")]
    stage.check("Nothing lost: each process's first page, read back from the pagefile, holds "
                "exactly what was written; the guests' own check finds 0 bad words",
                len(back) == 2 and all(t["back"][1] for t in back) and
                all(o.endswith(", 0 bad words\n") for o in outputs) and
                all(p.exit_status == 0 for p in procs),
                "; ".join(f"process {pid}: slot {t.get('slot')} -> frame "
                          f"{addr(t['back'][0]) if t.get('back') else '?'}, "
                          f"{'512 words as written' if t.get('back') and t['back'][1] else 'WRONG'}"
                          for pid, t in tracked.items()) +
                f"; guests: {[o.splitlines()[-1:] for o in outputs]}")


class _PageTracker:
    """Follows the first page of each pattern buffer: out to the pagefile, and back."""

    def __init__(self, act: Act, tracked: dict[int, dict[str, Any]]) -> None:
        self.act, self.tracked = act, tracked
        self.first_lines: set[int] = set()
        self.args: dict[int, tuple[int, ...]] = {}

    def __call__(self, event: Event, d: dict[str, Any]) -> None:
        thread = d.get("thread")
        proc = thread.process if thread is not None else None
        t = self.tracked.get(proc.pid) if proc is not None else None
        if event is Event.SYSCALL:
            self.args[thread.tid] = d["args"]
        if event is Event.SYSCALL_RETURN and d["number"] == Service.NtAllocateVirtualMemory \
                and d["result"] == 0:
            self._allocated(proc, self.args[thread.tid])
        elif event is Event.SYSCALL and d["number"] == Service.NtWriteConsole and t:
            self.first_lines.add(proc.pid)
            if not self.act.snapshot_maps:
                self.act.snapshot(f"when {describe.who(proc)} had written its memory, just "
                                  "before it reads it back")
        elif event is Event.EXCEPTION and t and _page_of(d["exc"].address) == t["base"]:
            pte = proc.space.pte(t["base"])
            decoded = softpte.decode(pte) if pte else None
            if decoded is not None and decoded.state is softpte.PteState.PAGEFILE:
                t["slot"], t["pending"] = decoded.slot, True
        elif event is Event.PAGE_FAULT and t and t.get("pending") and \
                d["resolution"] is FaultResolution.RESOLVED:
            t["pending"] = False
            frame = proc.space.lookup(t["base"]).pfn
            words = struct.unpack("<512Q", self.act.machine.mem.read(frame * PAGE_SIZE,
                                                                     PAGE_SIZE))
            t["back"] = (frame, list(words) == page_words(t["seed"], 0, 512))
            self.act.witness.say(describe.who(proc), "check", f"the page came back from "
                                 f"slot {t['slot']} into frame {addr(frame)}: its 512 words "
                                 f"{'are exactly' if t['back'][1] else 'are NOT'} what "
                                 "pattern wrote")

    def _allocated(self, proc, args: tuple[int, ...]) -> None:
        base, length = pointer(proc, args[0]), pointer(proc, args[1])
        if base is None or length is None:
            return
        self.tracked[proc.pid] = {"base": base, "size": length, "seed": int(proc.args[1])}
        self.act.fault_ranges.append((base, base + PAGE_SIZE))
        if not self.act.focus:            # the first and the last pages of the buffer
            self.act.focus += [(base, base + 4 * PAGE_SIZE),
                               (base + length - 4 * PAGE_SIZE, base + length)]


def _page_of(va: int | None) -> int | None:
    return None if va is None else va & ~(PAGE_SIZE - 1)


# The end of each user address space, drawn in the pictures (short: a map column's width).
TWO_GB_LINE = "2 GB: 0x80000000, 32-bit end"
TOP64_LINE = "128 TB: 0x8000'00000000, end"


@scenario(
    "address-limits",
    "a 32-bit process ends below 2 GB, a 64-bit one below 128 TB",
    "A 32-bit process typically has a virtual address space within the 2-gigabyte range "
    "0x00000000 through 0x7FFFFFFF. A 64-bit process on 64-bit Windows has a virtual "
    "address space within the 128-terabyte range 0x000'00000000 through 0x7FFF'FFFFFFFF.",
    ("guest/apps32/hello32.c", "guest/apps32/limits32.c", "guest/apps/vmtest.c",
     "guest/apps/noncanon.c"))
def address_limits(stage: Stage) -> None:
    """Act 1: 32-bit processes at the 2 GB line. Act 2: 64-bit ones at the 128 TB line."""
    two_gb, top64 = 0x8000_0000, USER_SPACE_END
    with stage.act("32-bit processes: hello32, limits32 (allocate at 2 GB), limits32 touch",
                   apps=[("hello32",), ("limits32",), ("limits32", "touch")],
                   focus=[(0x7FFE_0000, 0x7FFE_1000), (two_gb, two_gb + PAGE_SIZE)],
                   syscalls=[Service.NtAllocateVirtualMemory], dispatches=False,
                   explain_walks=True, boundaries=[(two_gb, TWO_GB_LINE)]) as act:
        act.run()
        small = [(p.name, p.bits, p.highest_address) for p in act.procs]
        top32 = max((pg.va for pm in act.stage.result.acts[-1].maps for pg in pm.pages),
                    default=0)
        refused = [r for pid, n, _, r in act.witness.syscalls
                   if pid == act.procs[1].pid and n == Service.NtAllocateVirtualMemory]
        touch = act.procs[2].exception
    with stage.act("64-bit processes: vmtest query (a top-down allocation), noncanon",
                   apps=[("vmtest", "query"), ("noncanon",)],
                   focus=[(0x7FFF_FFFE_0000, 0x7FFF_FFFE_1000),
                          (0x7FFF_FFFE_F000, 0x7FFF_FFFF_0000)],
                   syscalls=[Service.NtAllocateVirtualMemory], dispatches=False,
                   explain_walks=True, boundaries=[(top64, TOP64_LINE)]) as act:
        tops: list[int] = []
        act.on_event(_top_down_watcher(tops))
        act.run()
        large = [(p.name, p.bits, p.highest_address) for p in act.procs]
        top64_mapped = max((pg.va for pm in act.stage.result.acts[-1].maps
                            for pg in pm.pages), default=0)
        noncanon = act.procs[1]
        gp = noncanon.exception
    stage.facts.update(small=small, top32=top32, refused=refused, touch=touch, large=large,
                       top_down=tops, top64=top64_mapped, noncanon=gp)
    stage.check("A 32-bit process lives below 2 GB: its highest address is 0x7FFEFFFF and "
                "every page it maps is under 0x80000000",
                all(b == 32 and h == MM_HIGHEST_USER_ADDRESS_32 for _, b, h in small) and
                0 < top32 < two_gb,
                f"{[(n, b, addr(h)) for n, b, h in small]}; highest mapped page "
                f"{addr(top32)}")
    stage.check("At 2 GB a 32-bit process's space ends: an allocation there is refused "
                "(STATUS_INVALID_PARAMETER), a read there is an access violation",
                refused[:1] == [NTSTATUS.STATUS_INVALID_PARAMETER] and touch is not None and
                touch.code == NTSTATUS.STATUS_ACCESS_VIOLATION and touch.address == two_gb,
                f"allocation at 0x80000000: {[describe.status(r) for r in refused]}; "
                f"the read: {describe.exception(touch) if touch else 'no fault'}")
    stage.check("A 64-bit process gets the 128 TB range: its highest address is "
                "0x7FFF'FFFEFFFF and an allocation from the top lands just below it",
                all(b == 64 and h == MM_HIGHEST_USER_ADDRESS for _, b, h in large) and
                tops[:1] == [0x7FFF_FFFE_0000] and top64_mapped < top64,
                f"{[(n, b, addr(h, ticks=True)) for n, b, h in large]}; top-down "
                f"allocation at {[addr(t, ticks=True) for t in tops]}")
    stage.check("Past 128 TB there is no address at all: 0x0000'8000'00000000 is "
                "non-canonical, a #GP before any page walk",
                gp is not None and gp.code == NTSTATUS.STATUS_ACCESS_VIOLATION and
                "non-canonical address 0x800000000000" in gp.detail,
                f"noncanon: {describe.exception(gp)} ({gp.detail})" if gp else "no fault")


def _top_down_watcher(tops: list[int]):
    """An observer keeping the base of each MEM_TOP_DOWN allocation that succeeds."""
    pending: dict[int, tuple[int, ...]] = {}

    def observe(event: Event, d: dict[str, Any]) -> None:
        if event is Event.SYSCALL and d["number"] == Service.NtAllocateVirtualMemory and \
                d["args"][2] & MEM_TOP_DOWN:
            pending[d["thread"].tid] = d["args"]
        elif event is Event.SYSCALL_RETURN and d["thread"].tid in pending:
            args = pending.pop(d["thread"].tid)
            base = pointer(d["thread"].process, args[0])
            if d["result"] == 0 and base is not None:
                tops.append(base)
    return observe
