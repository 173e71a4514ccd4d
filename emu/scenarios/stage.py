"""The stage a scenario plays on: acts (machines), narration, checks, the result.

    stage.act("title", apps=[("notepad",), ("myapp",)], focus=[...]) -> Act
    with act: act.run()           boots, runs, narrates; the machine is closed on exit
    stage.check(claim, held, observed)

A check states a claim and what the machine showed; a claim that did not hold is a
failure of the scenario (and of `emu scenario run`, exit status 1).
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from emu import guests
from emu.fmt import addr
from emu.hw.memory import parse_size
from emu.machine import Machine, MachineResult
from emu.nt.loader import Image
from emu.nt.process import Process, ProcessState
from emu.scenarios.describe import size
from emu.scenarios.pictures import (
    KernelHalf,
    capture_kernel_half,
    driver_lines,
    driver_map,
    text_map,
)
from emu.scenarios.registry import Scenario
from emu.scenarios.timeline import Lane, Mark, MarkKind, lanes_for
from emu.scenarios.witness import Witness
from emu.viz.addrmap import MapRecorder, ProcessMap, capture

# The built guests: a checkout's guest/build, or a wheel's copy (emu.guests).
GUEST_BUILD = guests.build_dir()
AppSpec = tuple[str, ...] | Image       # ("counter", "a", "3"), or a ready image


class ScenarioError(Exception):
    """The scenario could not be played (a guest is missing, a machine would not boot)."""


@dataclass(frozen=True)
class Check:
    """A claim and what the machine showed."""

    claim: str
    held: bool
    observed: str


@dataclass
class ActRecord:
    """What the picture page needs from one act, after its machine is gone."""

    title: str
    marks: list[Mark]
    lanes: list[Lane]
    maps: list[ProcessMap]
    focus: list[tuple[int, int]]
    halves: list[KernelHalf]
    text: str
    kernel_map: ProcessMap | None = None     # the driver images, when the act shows them
    boundaries: list[tuple[int, str]] = field(default_factory=list)  # lines in the maps
    hits: dict[int, str] = field(default_factory=dict)   # frame -> who wrote it (a DPC)
    steps: str | None = None     # the act's steppable page (emu.viz.steps), when recorded


@dataclass
class ScenarioResult:
    """A played scenario: narration, acts, checks, and the facts the checks used."""

    scenario: Scenario
    lines: list[str] = field(default_factory=list)
    acts: list[ActRecord] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    facts: dict[str, object] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Every check held (and there was at least one), and nothing went wrong."""
        return self.error is None and bool(self.checks) and all(c.held for c in self.checks)


class Stage:
    """Where one scenario plays: it prints narration and keeps the result."""

    def __init__(self, scenario: Scenario, out: TextIO | None = None,
                 guest_build: Path = GUEST_BUILD,
                 events: Callable[[dict], None] | None = None, steps: bool = False) -> None:
        self.result = ScenarioResult(scenario)
        self._out = out
        self.guest_build = guest_build
        self._acts = 0
        self.events = events        # each act's event log records (emu.eventlog), or None
        self.steps = steps          # record each act's steppable page (docs/tour.md)

    @property
    def facts(self) -> dict[str, object]:
        """What the checks used, for the tests: filled by the scenario."""
        return self.result.facts

    def say(self, line: str = "") -> None:
        """Print one line of narration (and keep it for the page)."""
        self.result.lines.append(line)
        if self._out is not None:
            self._out.write(line + "\n")

    def act(self, title: str, **options) -> Act:
        """A new act: a machine booted with the given drivers and apps (see Act)."""
        self._acts += 1
        return Act(self, self._acts, title, **options)

    def check(self, claim: str, held: bool, observed: str) -> bool:
        """State a claim and what was observed; returns whether it held."""
        self.result.checks.append(Check(claim, held, observed))
        self.say(f"  [{'held' if held else 'FAILED'}] {claim}")
        self.say(f"           {'' if held else 'observed instead: '}{observed}")
        return held


class Act:
    """One machine of a scenario: its drivers and apps, a witness, a map recorder.

    Options: ``apps`` (names under guest/build/apps with arguments, or Images), ``drivers``
    (names under guest/build/drivers), ``mem``, ``quantum``, ``focus`` (virtual ranges the
    pictures draw), ``syscalls`` (services narrated), ``fault_ranges`` (resolved page
    faults narrated there), ``dispatches`` (narrate who gets the CPU), ``explain_walks``
    (the page walk behind a fatal fault), ``watch_dpc_writes``, ``watch_driver`` (a
    driver whose DriverEntry's stores are recorded), ``kernel_focus`` (also picture the
    driver images in the kernel half), ``boundaries`` ((address, words): a line the
    pictures draw where that address falls, the end of a user address space say)."""

    def __init__(self, stage: Stage, number: int, title: str, *, apps: Sequence[AppSpec],
                 drivers: Sequence[str] = (), mem: str = "64M", quantum: int | None = None,
                 focus: Sequence[tuple[int, int]] = (), syscalls: Sequence[int] = (),
                 fault_ranges: Sequence[tuple[int, int]] = (), dispatches: bool = True,
                 explain_walks: bool = False, watch_dpc_writes: bool = False,
                 watch_driver: str | None = None, kernel_focus: bool = False,
                 boundaries: Sequence[tuple[int, str]] = ()) -> None:
        self.stage, self.number, self.title = stage, number, title
        self.focus = list(focus)
        self.boundaries = list(boundaries)
        self.syscalls = frozenset(int(s) for s in syscalls)
        self.fault_ranges = list(fault_ranges)
        self.dispatches, self.explain_walks = dispatches, explain_walks
        self.watch_dpc_writes, self.watch_driver = watch_dpc_writes, watch_driver
        self.mem, self.driver_names = mem, list(drivers)
        self.kernel_focus = kernel_focus
        kwargs = {"quantum": quantum} if quantum is not None else {}
        self.machine = Machine(mem, console=self._console, **kwargs)
        if stage.events is not None:     # `emu scenario run --events FILE`
            from emu.eventlog import EventLog
            tag = {"scenario": stage.result.scenario.name, "act": number}
            EventLog.attach(self.machine, lambda record: stage.events({**record, **tag}))
        self.steps = None           # `emu scenario run --out DIR`: the act's StepRecorder
        if stage.steps:
            from emu.stepsrecord import StepRecorder
            self.steps = StepRecorder.attach(self.machine)
        self.witness = Witness(self, stage.say)
        self.halves: dict[int, KernelHalf] = {}
        self.result: MachineResult | None = None
        self.snapshot_maps: list[ProcessMap] = []
        self.snapshot_note = ""
        try:
            for name in drivers:
                self.machine.add_driver(self._guest("drivers", name))
            self.procs = [self._spawn(spec) for spec in apps]
        except Exception:
            self.machine.close()
            raise
        self.recorder = MapRecorder(self.machine)
        self.machine.executive.exit_observers.append(self._on_exit)
        self.machine.executive.events.subscribe(self.witness)

    def _guest(self, kind: str, name: str) -> Path:
        path = self.stage.guest_build / kind / name
        if not path.is_file():
            raise ScenarioError(f"{path}: no such file ({guests.missing_hint()})")
        return path

    def _spawn(self, spec: AppSpec) -> Process:
        if isinstance(spec, Image):
            return self.machine.executive.create_process(spec, [])
        return self.machine.spawn(self._guest("apps", spec[0]), list(spec[1:]))

    def _console(self, proc: Process | None, data: bytes) -> None:
        self.witness.console(proc, data)

    def _on_exit(self, proc: Process) -> None:
        self.halves[proc.pid] = capture_kernel_half(proc)

    def __enter__(self) -> Act:
        return self

    def __exit__(self, *exc_info) -> None:
        self.machine.close()

    def proc(self, name: str, nth: int = 0) -> Process:
        """The ``nth`` process (in spawn order) whose image is called ``name``."""
        found = [p for p in self.procs if p.name == name]
        if len(found) <= nth:
            raise ScenarioError(f"act {self.number}: no process {name!r} #{nth}")
        return found[nth]

    def on_event(self, observer: Callable, *, before_witness: bool = False) -> None:
        """Let the scenario observe the executive's events too: after the witness, or
        before it (to say something before the witness tells the same event)."""
        bus = self.machine.executive.events
        if before_witness:
            bus.observers.insert(0, observer)
        else:
            bus.subscribe(observer)

    def snapshot(self, note: str) -> None:
        """Picture the live address spaces now instead of at the end (``note``: when)."""
        self.snapshot_maps = [capture(p) for p in self.machine.processes
                              if p.state is not ProcessState.TERMINATED]
        self.snapshot_note = note

    def run(self) -> MachineResult:
        """Tell what is on stage, run the machine to its end, and keep the pictures."""
        say = self.stage.say
        say("")
        say(f"Act {self.number}: {self.title}")
        drivers = ", ".join(self.driver_names) or "none"
        apps = "; ".join(" ".join([p.name, *p.args]) + f" (pid {p.pid})" for p in self.procs)
        say(f"  machine: {size(parse_size(self.mem))} of RAM; drivers: {drivers}; apps: {apps}")
        self.result = self.machine.run()
        self.witness.finish()
        for proc in self.machine.processes:
            if proc.state is not ProcessState.TERMINATED:
                self.halves[proc.pid] = capture_kernel_half(proc)
        maps = self.recorder.finish()
        if self.snapshot_maps:
            say(f"  (the pictures show the address spaces {self.snapshot_note})")
            maps = self.snapshot_maps
        halves = [self.halves[pid] for pid in sorted(self.halves)]
        text = text_map(maps, self.focus, halves, self.boundaries)
        kmap = None
        if self.kernel_focus:
            kmap = driver_map(self.machine.executive)
            text += "\n".join(driver_lines(self.machine.executive)) + "\n"
        if self.result.stopped and self.result.stopped != "bug check":
            say(f"  the machine stopped: {self.result.stopped}")
        if text:
            say("  The picture (virtual page -> physical frame, from the page tables):")
            for line in text.rstrip("\n").split("\n"):
                say(line)
        disk = any(m.kind in (MarkKind.HARD_FAULTS, MarkKind.PAGE_OUT)
                   for m in self.witness.marks)
        lanes = lanes_for([(p.pid, p.name) for p in self.machine.processes], disk=disk)
        self.stage.result.acts.append(ActRecord(self.title, list(self.witness.marks), lanes,
                                                maps, self.focus, halves, text, kmap,
                                                self.boundaries, self._hits(),
                                                self._steps_page()))
        return self.result

    def _steps_page(self) -> str | None:
        """The act's steppable page (emu.viz.steps), made now so that only its text is kept."""
        if self.steps is None:
            return None
        from emu.viz import steps as steps_page

        title = f"emu scenario run {self.stage.result.scenario.name}: act {self.number}, " \
            f"{self.title}"
        return steps_page.page(self.steps.steps, self.steps.left_out, title)

    def _hits(self) -> dict[int, str]:
        """The process frames the act's DPCs stored into: the maps outline them."""
        return {run.pfn: "DPC wrote" for dpc in self.witness.dpcs for run in dpc.runs
                if run.owner is not None}


def output(proc: Process) -> str:
    """What ``proc`` wrote to the console, as text."""
    return proc.output.decode("utf-8", "replace")


def hexes(values: Sequence[int]) -> str:
    """``0xaf, 0xb7, 0xb9``."""
    return ", ".join(addr(v) for v in values)


def play(scenario: Scenario, out: TextIO | None = None,
         guest_build: Path = GUEST_BUILD,
         events: Callable[[dict], None] | None = None, steps: bool = False) -> ScenarioResult:
    """Play one scenario from start to verdict, narrating to ``out`` (and each machine's
    event records to ``events``; with ``steps``, each act keeps its steppable page); never
    raises for a scenario that goes wrong: its result says so (``error``, or a check that
    failed)."""
    stage = Stage(scenario, out, guest_build, events, steps)
    stage.say(f"== {scenario.name}: {scenario.title}")
    for line in textwrap.wrap(f'The seed: "{scenario.claim}"', 96):
        stage.say(line)
    stage.say(f"Guest sources: {', '.join(scenario.sources)}")
    try:
        scenario.play(stage)
    except ScenarioError as err:
        stage.result.error = str(err)
    except Exception as err:         # a scenario that breaks is a failed scenario, told once
        stage.result.error = f"the scenario itself broke: {type(err).__name__}: {err}"
    result = stage.result
    stage.say("")
    if result.ok:
        stage.say(f"=> {scenario.name}: the claim holds ({len(result.checks)} checks)")
    else:
        stage.say(f"=> {scenario.name}: FAILED")
        for reason in failures(result):
            stage.say(f"   {reason}")
    stage.say("")
    return result


def failures(result: ScenarioResult) -> list[str]:
    """One line per reason ``result`` is not ok."""
    out = [result.error] if result.error else []
    out += [f"{c.claim}: observed {c.observed}" for c in result.checks if not c.held]
    if not result.checks and not result.error:
        out.append("no claim was checked")
    return out
