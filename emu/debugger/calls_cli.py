"""``emu query calls``: ``history calls`` on the command line, for scripts.

    emu query calls SYMBOL [--pid N] [--args N] [--json] [machine options]
        APP ARGS... [-- APP2 ARGS2...]

runs the machine to its end (or a bug check), then answers as ``emu debug``'s
``history calls SYMBOL [pid N] [args N] [--json]`` does at the end (docs/debugger.md); the
guests' console output is not shown. Bad input: one line, exit 2.
"""

from __future__ import annotations

import json
import sys

CLI_USAGE = "emu query calls SYMBOL [--pid N] [--args N] [--json] [machine options] APP ARGS..."


def _take_args(words: list[str], usage_error, valued: dict[str, str]) -> int | None:
    """Take ``--args N`` out of the options before APP; its value, or None."""
    from emu.debugger import calls

    i, nargs = 0, None
    while i < len(words) and words[i].startswith("-"):
        if words[i] == "--args":
            if i + 1 >= len(words):
                raise usage_error("--args needs a value")
            try:
                nargs = calls.parse_args(words[i + 1])
            except calls.CallsError as err:
                raise usage_error(f"--{err}") from None
            del words[i:i + 2]
            continue
        i += 2 if words[i] in valued else 1
    return nargs


def run(words: list[str], usage_error, size_type, count_type, split_commands) -> int:
    """Run ``emu query calls`` (``words``: what follows ``calls``); the exit status."""
    from emu.debugger import calls
    from emu.debugger.history import _symbolizer
    from emu.debugger.querycli import _VALUED, _options, run_to_end

    if not words or words[0].startswith("-"):
        raise usage_error(f"emu query calls needs a function ({CLI_USAGE})")
    symbol = words.pop(0)
    nargs = _take_args(words, usage_error, _VALUED)
    opts, rest = _options(words, usage_error, size_type, count_type)
    if opts.get("phys"):
        raise usage_error("--phys: a call is not at a physical address (--pid N keeps one "
                          "process's calls)")
    build, machine, session = run_to_end(opts, rest, usage_error, split_commands)
    session.run()
    end = session.position
    target = session.target
    try:
        pid = opts.get("pid")
        if pid is not None:
            pid = calls.parse_pid(str(pid), {p.pid for p in machine.processes})
        fn = calls.resolve(symbol, target.images())
        n = fn.default_args() if nargs is None else nargs
        found, truncated, _ = calls.CallIndex().answer(fn, n, end, build, ended=True)
        found = [c for c in found if pid is None or c.pid == pid]
        symbolize = calls.memo(_symbolizer(target))
        out = sys.stdout
        if opts.get("json"):
            for c in found:
                out.write(json.dumps(c.json(fn, n, symbolize), separators=(",", ":")) + "\n")
        else:
            for row_number, c in enumerate(found, 1):
                out.write(calls.row(row_number, c, fn, n, symbolize) + "\n")
            out.write(calls.summary(fn, len(found), pid, end, truncated, False) + "\n")
    except calls.CallsError as err:
        raise usage_error(str(err)) from None
    finally:
        session.close()
    return 0
