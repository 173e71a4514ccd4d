"""``emu query``: ``history write|read|access`` on the command line, for scripts.

    emu query write|read|access ADDR [LEN] [--pid N | --phys] [--json] [machine options]
        APP ARGS... [-- APP2 ARGS2...]
    emu query why [--address ADDR [--length N] [--pid N]] [--json] [machine options]
        APP ARGS... [-- APP2 ARGS2...]
    emu query calls SYMBOL [--pid N] [--args N] [--json] [machine options] APP ARGS...
        (emu.debugger.calls_cli)

runs the machine to its end (or a bug check), then answers as ``emu debug``'s
``history write|read|access`` (or ``analyze --why``) does at the end (docs/debugger.md);
the guests' console output is not shown. Bad input: one line, exit 2.
"""

from __future__ import annotations

import argparse
import os
import sys

_VALUED = {"--address": "address", "--length": "length", "--pid": "pid", "--mem": "mem",
           "--driver": "driver", "--quantum": "quantum", "--fs": "fs",
           "--pagefile-size": "pagefile_size"}
_FLAGS = {"--phys": "phys", "--json": "json", "--smap": "smap", "--no-pagefile": "no_pagefile"}


def add_parser(sub) -> None:
    """Add ``emu query`` to the ``emu`` command's subparsers."""
    p = sub.add_parser("query", help="who read or wrote memory, or called a function, over "
                       "a whole run",
                       description="Run a machine to its end, then list every access to a "
                       "range, from boot: write, read or access ADDR [LEN] [--pid N | --phys] "
                       "[--json] [--mem SIZE] [--driver PATH]... [--quantum N] [--fs DIR] "
                       "[--smap] [--no-pagefile | --pagefile-size SIZE] APP ARGS...; or every "
                       "call of a function: calls SYMBOL [--pid N] [--args N] [--json] "
                       "[machine options] APP ARGS...; or why [--address ADDR [--length N] "
                       "[--pid N]] [--json] [machine options] APP ARGS...: analyze --why at "
                       "the end")
    p.add_argument("words", nargs=argparse.REMAINDER, metavar="...")


def _options(words: list[str], usage_error, size_type, count_type) -> tuple[dict, list[str]]:
    """The options before APP, and APP with what follows it."""
    opts: dict = {"driver": []}
    while words and words[0].startswith("-"):
        word = words.pop(0)
        if word in _FLAGS:
            opts[_FLAGS[word]] = True
        elif word in _VALUED:
            if not words:
                raise usage_error(f"{word} needs a value")
            value = words.pop(0)
            name = _VALUED[word]
            if name == "driver":                # a bare name: a built driver (emu.guests)
                from emu.guests import driver_path
                opts["driver"].append(driver_path(value))
            elif name in ("mem", "pagefile_size"):
                opts[name] = _typed(size_type, word, value, usage_error)
            elif name in ("address", "length"):
                opts[name] = value
            elif name == "pid":
                try:
                    opts["pid"] = int(value, 0)
                except ValueError:
                    raise usage_error(f"--pid {value}: not a process id (a number)") from None
            else:
                opts[name] = _typed(count_type, word, value, usage_error) \
                    if name == "quantum" else value
        else:
            raise usage_error(f"unknown option {word} (emu query --help)")
    return opts, words


def _typed(convert, option: str, value: str, usage_error):
    """``convert(value)`` (emu run's checks of a size or a count); its refusal worded as
    argparse words it for emu run and emu debug."""
    try:
        return convert(value)
    except argparse.ArgumentTypeError as err:
        raise usage_error(f"argument {option}: {err}") from None


def run_to_end(opts: dict, rest: list[str], usage_error, split_commands,
               going_back: bool = False) -> tuple:
    """The machine ``emu query``'s machine options and commands describe: (its recipe, the
    machine, a Session on it that runs to the end, not yet run; with ``going_back``, the
    session can go back, remaking the machine from the recipe). Bad options or an app that
    does not load: a usage error."""
    from emu.debugger.cli import DEFAULT_MEM, recipe
    from emu.debugger.session import Session
    from emu.nt.loader import LoaderError
    from emu.nt.ps import LimitError

    if opts.get("no_pagefile") and opts.get("pagefile_size") is not None:
        raise usage_error("--no-pagefile cannot be combined with --pagefile-size")
    if opts.get("fs") is not None and not os.path.isdir(opts["fs"]):
        raise usage_error(f"--fs {opts['fs']}: not a directory")
    if not rest:
        raise usage_error("missing APP")
    mem = opts.get("mem")
    ns = argparse.Namespace(mem=DEFAULT_MEM if mem is None else mem, quantum=opts.get("quantum"),
                            fs=opts.get("fs"), smap=bool(opts.get("smap")),
                            no_pagefile=bool(opts.get("no_pagefile")),
                            pagefile_size=opts.get("pagefile_size"), driver=opts["driver"])
    build = recipe(ns, split_commands(rest), lambda _proc, _data: None)
    try:
        machine = build()
    except (LoaderError, ValueError, LimitError) as err:
        raise usage_error(str(err)) from None
    session = Session(machine, lambda _stop: session.ended is False and
                      (session.cont() or True), factory=build if going_back else None)
    return build, machine, session

def run(args: argparse.Namespace, usage_error, size_type, count_type, split_commands) -> int:
    """Run ``emu query``; returns the exit status."""
    from emu.debugger import query  # here: `emu run` must not pay for the debugger
    from emu.debugger.expr import ExprError, evaluate
    from emu.debugger.history import _symbolizer, access_row, access_summary

    words = list(args.words)
    if words and words[0] == "why":
        return run_why(words[1:], usage_error, size_type, count_type, split_commands)
    if words and words[0] == "calls":
        from emu.debugger import calls_cli
        return calls_cli.run(words[1:], usage_error, size_type, count_type, split_commands)
    if not words or words[0] not in query.KINDS:
        raise usage_error("emu query needs write, read or access, then ADDR (emu query "
                          "write ADDR [LEN] [--pid N | --phys] [--json] APP ARGS...), or "
                          "calls, then SYMBOL (emu query calls SYMBOL [--pid N] [--args N] "
                          "[--json] APP ARGS...), or why (emu query why [--address ADDR] "
                          "[--json] APP ARGS...)")
    kind = words.pop(0)
    if not words or words[0].startswith("-"):
        raise usage_error(f"emu query {kind} needs an address")
    address = words.pop(0)
    length = None
    if words and not words[0].startswith("-"):
        try:
            length = int(words[0], 0)
            words.pop(0)
        except ValueError:
            pass                             # APP
    opts, rest = _options(words, usage_error, size_type, count_type)
    if opts.get("pid") is not None and opts.get("phys"):
        raise usage_error("--pid and --phys: one or the other (a physical address is "
                          "everyone's)")
    build, machine, session = run_to_end(opts, rest, usage_error, split_commands)
    session.run()
    end = session.position
    pids = {p.pid for p in machine.processes}
    target = session.target
    try:
        words = [kind, address] + ([str(length)] if length is not None else [])
        if opts.get("phys"):
            words.append("phys")
        elif opts.get("pid") is not None:
            words += ["pid", str(opts["pid"])]

        def number(text: str) -> int:
            try:
                return evaluate(text, target)
            except ExprError as err:
                raise ValueError(str(err)) from None
        q, _ = query.parse(words, pids, None, number, machine.mem.size)
        found, truncated, _ = query.QueryIndex().answer(q, end, build)
        symbolize = _symbolizer(target)
        out = sys.stdout
        if opts.get("json"):
            import json  # here, not at the top: every `emu run` builds this parser
            for a in found:
                out.write(json.dumps(a.json(symbolize(a.rip, a.pid)),
                                     separators=(",", ":")) + "\n")
        else:
            for n, a in enumerate(found, 1):
                out.write(access_row(n, a, symbolize) + "\n")
            out.write(access_summary(q, len(found), end, truncated, False) + "\n")
    except query.QueryError as err:
        raise usage_error(str(err)) from None
    finally:
        session.close()
    return 0


def run_why(words: list[str], usage_error, size_type, count_type, split_commands) -> int:
    """``emu query why [--address ADDR [--length N] [--pid N]] [--json] [machine options]
    APP ARGS...``: run the machine to its end, then print what ``analyze --why`` prints
    there (docs/debugger.md); exit status 0, or 1 when there is nothing to explain."""
    import json  # here, not at the top: every `emu run` builds this parser

    from emu.debugger import why
    from emu.debugger.history import history_of

    opts, rest = _options(list(words), usage_error, size_type, count_type)
    if opts.get("phys"):
        raise usage_error("emu query why: --phys is not an option here (a value is virtual: "
                          "--address ADDR [--pid N])")
    if opts.get("address") is None and (opts.get("length") is not None or
                                        opts.get("pid") is not None):
        raise usage_error("--length and --pid go with --address ADDR")
    build, machine, session = run_to_end(opts, rest, usage_error, split_commands,
                                         going_back=True)
    try:
        session.run()
        address = None
        if opts.get("address") is not None:
            address = _why_address(session, opts, usage_error)
        history = history_of(machine)
        events = [record for _, record in history.records()] if history is not None else []
        try:
            result = why.answer(session.target, build, session.position, events,
                                address=address)
        except why.WhyError as err:
            sys.stderr.write(f"emu: {err}\n")
            return 1
        if opts.get("json"):
            sys.stdout.write(json.dumps(why.json_record(result), separators=(",", ":")) + "\n")
        else:
            sys.stdout.write(why.text(result) + "\n")
    finally:
        session.close()
    return 0


def _why_address(session, opts: dict, usage_error) -> tuple[int, int, int | None]:
    """(address, length, pid) of ``--address``/``--length``/``--pid``, as ``analyze --why
    ADDR [LEN] [pid N]`` takes them at the end of the run."""
    from emu.debugger.analyze import _why_address as parse_words
    from emu.debugger.why import WhyError

    words = [opts["address"]]
    if opts.get("length") is not None:
        words.append(opts["length"])
    if opts.get("pid") is not None:
        words += ["pid", str(opts["pid"])]

    class _Shell:
        view_pid = None
    try:
        found = parse_words(_Shell(), session, words)
    except WhyError as err:
        raise usage_error(str(err)) from None
    if found is None:                       # (not reached: an address was given)
        raise usage_error("--address needs an address")
    return found
