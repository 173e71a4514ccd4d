"""``emu scenario``: list the tour's scenarios, play one, several, or all of them.

    emu scenario list
    emu scenario run NAME [NAME...] [--out DIR] [--events FILE]
    emu scenario run --all [--out DIR] [--events FILE]

Exit status: 0 when every scenario played held its claim, 1 when one did not (which claim
and what was observed instead is printed), 2 for a usage error (an unknown name prints the
list; an output folder that cannot be written is one line; a page failing after the run is
one line and keeps the status 0 or 1).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from emu.outputs import discard_stdout

EXIT_HELD, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``scenario`` (with ``list`` and ``run``) to the ``emu`` command's subparsers."""
    parser = subparsers.add_parser(
        "scenario", help="the tour: the seed's claims as narrated scenarios",
        description="Each scenario boots a machine, runs guest apps and drivers, tells what "
        "happens, and checks one claim of the seed against the machine's state.")
    actions = parser.add_subparsers(dest="scenario_command", metavar="ACTION",
                                    parser_class=type(parser))
    actions.add_parser("list", help="the scenarios, one line each")
    run = actions.add_parser("run", help="play scenarios (NAME..., or --all)")
    run.add_argument("names", nargs="*", metavar="NAME", help="scenarios to play, in order")
    run.add_argument("--all", action="store_true", help="play every scenario (the tour)")
    run.add_argument("--out", metavar="DIR", help="also write each scenario's picture page "
                     "(self-contained HTML with SVG) and its acts' steppable pages into DIR, "
                     "and DIR/index.html")
    run.add_argument("--events", metavar="FILE", help="write every act's machine events as "
                     "JSON Lines (docs/report.md, \"The event log\")")
    return parser


def run(args: argparse.Namespace) -> int:
    """Do what ``emu scenario ...`` asked; returns the exit status."""
    from emu.scenarios.registry import all_scenarios

    scenarios = all_scenarios()
    if args.scenario_command == "list":
        width = max(len(s.name) for s in scenarios)
        for s in scenarios:
            print(f"{s.name:<{width}}  {s.title}")
        return EXIT_HELD
    if args.scenario_command != "run":
        return _usage("missing action (try: emu scenario list, emu scenario run --all)")
    by_name = {s.name: s for s in scenarios}
    unknown = [n for n in args.names if n not in by_name]
    if unknown:
        print(f"emu: error: no scenario named {unknown[0]!r}; the scenarios are:",
              file=sys.stderr)
        for s in scenarios:
            print(f"  {s.name}", file=sys.stderr)
        return EXIT_USAGE
    if args.all and args.names:
        return _usage("give scenario names or --all, not both")
    chosen = scenarios if args.all else [by_name[n] for n in args.names]
    if not chosen:
        return _usage("name a scenario to run, or --all (emu scenario list shows them)")
    out = None
    if args.out is not None:
        problem = _writable(Path(args.out))
        if problem:
            return _usage(problem)
        out = Path(args.out)
    if args.events is not None:
        from emu.outputs import output_problem
        problem = output_problem("--events", args.events)
        if problem:
            return _usage(problem)
    try:
        return _play(chosen, out, args.events)
    except BrokenPipeError:                  # `emu scenario run --all | head`: stop quietly
        discard_stdout()
        return EXIT_FAILED


def _usage(message: str) -> int:
    print(f"emu: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _writable(folder: Path) -> str | None:
    """None if pages can be written into ``folder`` (made if missing), else why not."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        return f"--out {folder}: not a folder"
    except OSError as err:
        return f"--out {folder}: cannot create it: {err.strerror}"
    if not folder.is_dir():
        return f"--out {folder}: not a folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"--out {folder}: cannot write there: permission denied"
    return None


def _play(chosen, out: Path | None, events_path: str | None = None) -> int:
    from emu import guests
    from emu.scenarios.stage import GUEST_BUILD, failures, play

    if not (GUEST_BUILD / "apps").is_dir():
        return _usage(f"{GUEST_BUILD}: the guests are not built (run: make -C guest)"
                      if not guests.packaged() else f"{GUEST_BUILD}: the guests are missing "
                      "from this installation (reinstall the wheel)")
    writer = None
    if events_path is not None:
        from emu.eventlog import JsonLinesWriter
        try:
            writer = JsonLinesWriter(open(events_path, "w", encoding="utf-8"))  # noqa: SIM115
        except OSError as err:
            return _usage(f"--events {events_path}: cannot write there: {err.strerror}")
    try:
        results = [play(s, sys.stdout, events=writer) for s in chosen]
    finally:
        if writer is not None:
            try:
                writer.stream.close()
            except OSError as err:
                writer.error = writer.error or err
    if writer is not None and writer.error is not None:
        print(f"emu: error: cannot write event log {events_path}: {writer.error.strerror} "
              "(the log is incomplete)", file=sys.stderr)
    sys.stdout.flush()
    if out is not None:
        for r in results:
            _record_steps(r)
        problem = _write_pages(results, out)
        if problem:      # one line; the scenarios' own verdicts and exit status still stand
            print(f"emu: error: {problem}", file=sys.stderr)
    failed = [r for r in results if not r.ok]
    if len(results) > 1:
        print(f"The tour: {len(results)} scenarios, {len(results) - len(failed)} held their "
              f"claims{', ' + str(len(failed)) + ' FAILED' if failed else ''}.")
    for r in failed:
        for reason in failures(r):
            print(f"FAILED {r.scenario.name}: {reason}", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_HELD


def _record_steps(result) -> None:
    """Give each act of ``result`` its steppable page (emu.viz.steps), recorded by playing
    the scenario once more, silently, with a StepRecorder on each act's machine.

    A second play, not the first: recording counts every instruction, which moves the
    machine's clock where an uncounted run stands still (docs/report.md, "The event log"),
    so the narration and NAME.html stay exactly what they are without --out's pages. The
    machine is deterministic: the second play runs the same instructions in the same
    schedule, its positions those of ``--events``."""
    from emu.scenarios.stage import play

    again = play(result.scenario, None, steps=True)
    for act, recorded in zip(result.acts, again.acts, strict=False):
        act.steps = recorded.steps


def _write_pages(results, out: Path) -> str | None:
    """Write NAME.html per scenario, its acts' steppable pages (NAME-steps.html, then
    NAME-steps-2.html... for a second act on) and index.html; None, or a one-line problem."""
    from emu.scenarios import html

    files = [f"{r.scenario.name}.html" for r in results]
    try:
        for r, name in zip(results, files, strict=True):
            (out / name).write_text(html.page(r), encoding="utf-8")
            for number, act in enumerate(r.acts, 1):
                if act.steps is not None:
                    (out / html.steps_file(r.scenario.name, number)).write_text(
                        act.steps, encoding="utf-8")
        (out / "index.html").write_text(html.index(results, files), encoding="utf-8")
    except OSError as err:
        return f"cannot write the pages into {out}: {err.strerror}"
    print(f"Pictures: {out / 'index.html'}")
    return None
