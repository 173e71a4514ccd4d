"""``emu exercise``: make exercises, a worksheet, or check an answer (docs/exercises.md).

    emu exercise [KIND] [--seed S] [--count N] [--html FILE] [--json]
    emu exercise check KIND --seed S ANSWER...
    emu exercise list

Exit status: 0 (exercises written; a right answer), 1 (a wrong answer), 2 (a usage error:
one line ``emu: error: ...``; an unknown kind names the kinds).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from emu.exercise import SEED_MAX, AnswerError, Exercise, SceneError
from emu.outputs import discard_stdout

EXIT_OK, EXIT_WRONG, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
MAX_COUNT = 1000


class _Usage(Exception):
    """A usage error: one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:      # one line, not argparse's usage dump
        raise _Usage(message)


def _kinds() -> dict[str, tuple[Callable, Callable, Callable, str]]:
    """kind -> (scene, generate, check, one-line summary), in the order of docs/exercises.md."""
    from emu.exercise import bugcheck, dpc, evict, refuse, scenes, translate
    return {
        "translate": (scenes.spaces, translate.generate, translate.check,
                      "translate a VA in a process: physical address, #PF error code or #GP"),
        "refuse": (scenes.spaces, refuse.generate, refuse.check,
                   "which entries and bit refuse a ring-3 access, and what change allows it"),
        "dpc": (lambda: None, dpc.generate, dpc.check,
                "which process's frame a DPC's store lands in (neither, direct, buffered I/O)"),
        "bugcheck": (lambda: None, bugcheck.generate, bugcheck.check,
                     "predict a buggy driver's bug check code and first parameter"),
        "evict": (lambda: None, evict.generate, evict.check,
                  "which page the working-set clock evicts next under memory pressure"),
    }


KIND_NAMES = ("translate", "refuse", "dpc", "bugcheck", "evict")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``exercise`` with the ``emu`` command (its words are parsed by ``run``)."""
    parser = subparsers.add_parser(
        "exercise", add_help=False,
        help="seeded exercises from a real machine state, checked by the machine",
        description="emu exercise [KIND] [--seed S] [--count N] [--html FILE] [--json]; "
        "emu exercise check KIND --seed S ANSWER (docs/exercises.md)")
    parser.add_argument("words", nargs=argparse.REMAINDER)
    return parser


def _parser() -> _Parser:
    parser = _Parser(prog="emu exercise", description="Seeded, reproducible exercises asked "
                     "of a real machine state; `check` says right or wrong and explains, from "
                     "the code that runs the machine (docs/exercises.md).")
    parser.add_argument("words", nargs="*", metavar="WORD",
                        help="KIND; or `check KIND ANSWER...`; or `list`. Kinds: "
                        + ", ".join(KIND_NAMES))
    parser.add_argument("--seed", metavar="S", help=f"the exercise's seed, an integer 0 to "
                        f"2**32-1 = {SEED_MAX} (decimal or 0x hex; default 0)")
    parser.add_argument("--count", metavar="N", help=f"N exercises, from seeds S, S+1, ... "
                        f"(1 to {MAX_COUNT}; default 1)")
    parser.add_argument("--html", metavar="FILE", help="write a printable, self-contained "
                        "sheet (answers at the end) into FILE")
    parser.add_argument("--json", action="store_true", help="print the exercises as JSON, "
                        "answers and explanations included")
    return parser


def run(argv: Sequence[str]) -> int:
    """Do what ``emu exercise ARGV...`` asks; returns the exit status."""
    try:
        return _run(list(argv))
    except (_Usage, AnswerError, SceneError) as err:
        print(f"emu: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("emu: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:                 # `emu exercise ... | head`: stop quietly
        discard_stdout()
        return EXIT_OK


def _number(text: str, option: str) -> int:
    from emu.exercise.answers import parse_number
    try:
        return parse_number(text, option)
    except AnswerError as err:
        raise _Usage(str(err)) from None


def _seed(args: argparse.Namespace, count: int) -> int:
    text = "0" if args.seed is None else args.seed.strip()
    seed = None if text.startswith("-") else _number(text, "--seed")
    if seed is None or seed > SEED_MAX:
        raise _Usage(f"--seed {args.seed}: out of range (a seed is 0 to {SEED_MAX})")
    if seed + count - 1 > SEED_MAX:
        raise _Usage(f"--seed {args.seed} --count {count}: the last seed, {seed + count - 1}, "
                     f"is past {SEED_MAX}")
    return seed


def _kind(name: str) -> str:
    if name not in KIND_NAMES:
        raise _Usage(f"unknown exercise kind {name!r} (the kinds: {', '.join(KIND_NAMES)})")
    return name


def _run(argv: list[str]) -> int:
    if argv[:1] in (["-h"], ["--help"]):
        _parser().print_help()
        return EXIT_OK
    args = _parser().parse_intermixed_args(argv)
    words = args.words
    if words[:1] == ["list"]:
        if len(words) > 1 or args.seed or args.count or args.html or args.json:
            raise _Usage("`emu exercise list` takes nothing else")
        for name, (_, _, _, summary) in _kinds().items():
            print(f"{name:<10} {summary}")
        return EXIT_OK
    if words[:1] == ["check"]:
        return _check(args, words[1:])
    if len(words) > 1:
        raise _Usage(f"one kind at a time, not {' '.join(words)!r} (to check an answer: "
                     "emu exercise check KIND --seed S ANSWER)")
    kind = _kind(words[0]) if words else None
    count = 1 if args.count is None else _number(args.count, "--count")
    if not 1 <= count <= MAX_COUNT:
        raise _Usage(f"--count {args.count}: must be 1 to {MAX_COUNT}")
    seed = _seed(args, count)
    if args.html is not None:
        from emu.outputs import output_problem
        problem = output_problem("--html", args.html)
        if problem:
            raise _Usage(problem)
    exercises = [make(kind or KIND_NAMES[s % len(KIND_NAMES)], s)
                 for s in range(seed, seed + count)]
    if args.html is not None:
        from emu.exercise.html import sheet
        try:
            with open(args.html, "w", encoding="utf-8") as out:
                out.write(sheet(exercises))
        except OSError as err:
            raise _Usage(f"--html {args.html}: cannot write it: {err.strerror}") from None
    if args.json:
        import json  # here, not at the top: every `emu run` registers this command

        print(json.dumps([e.as_json() for e in exercises], indent=2))
    elif args.html is None:
        for i, e in enumerate(exercises):
            if i:
                print()
            print(_heading(e))
            print(e.question)
            print(f"(check: emu exercise check {e.kind} --seed {e.seed} ANSWER)")
        if count == 1 and sys.stdin.isatty() and sys.stdout.isatty():
            return _prompt(exercises[0])
    else:
        print(f"emu exercise: {count} exercise{'s' * (count > 1)} written to {args.html}")
    return EXIT_OK


def _heading(e: Exercise) -> str:
    return f"== exercise {e.kind}, seed {e.seed} =="


def make(kind: str, seed: int) -> Exercise:
    """The exercise of ``kind`` for ``seed``, from the kind's machine state."""
    scene, generate, _, _ = _kinds()[kind]
    return generate(scene(), seed)


def verdict(exercise: Exercise, answer: str) -> tuple[bool, str]:
    """(right?, the text ``check`` prints: the verdict, then the machine's explanation)."""
    _, _, check, _ = _kinds()[exercise.kind]
    right = check(exercise, answer)
    head = (f"right: {exercise.answer}" if right else
            f"wrong: you answered {answer.strip()}; the machine says {exercise.answer}")
    return right, f"{head}\n{exercise.explanation}"


def _check(args: argparse.Namespace, words: list[str]) -> int:
    if not words:
        raise _Usage("check needs a kind and an answer: emu exercise check KIND --seed S "
                     "ANSWER")
    kind = _kind(words[0])
    if len(words) < 2:
        raise _Usage("check needs an answer after the kind: emu exercise check KIND --seed S "
                     "ANSWER")
    if args.seed is None:
        raise _Usage("check needs the exercise's seed: --seed S")
    if args.count is not None or args.html is not None:
        raise _Usage("check takes one exercise: no --count or --html")
    seed = _seed(args, 1)
    answer = " ".join(words[1:])
    _parse_only(kind, answer)              # a malformed answer is refused before any boot
    exercise = make(kind, seed)
    right, text = verdict(exercise, answer)
    if args.json:
        import json  # here, not at the top: every `emu run` registers this command

        print(json.dumps({**exercise.as_json(), "given": answer, "right": right}, indent=2))
    else:
        print(text)
    return EXIT_OK if right else EXIT_WRONG


def _parse_only(kind: str, answer: str) -> None:
    """AnswerError if ``answer`` is not in ``kind``'s grammar."""
    from emu.exercise import bugcheck, dpc, evict, refuse, translate
    {"translate": translate.parse, "refuse": refuse.parse, "dpc": dpc.parse,
     "bugcheck": bugcheck.parse, "evict": evict.parse}[kind](answer)


def _prompt(exercise: Exercise) -> int:
    """Ask for the answer at the terminal, then say right or wrong and explain."""
    while True:
        try:
            answer = input("answer> ")
        except EOFError:
            print()
            return EXIT_OK
        try:
            right, text = verdict(exercise, answer)
        except AnswerError as err:
            print(f"not an answer: {err}")
            continue
        print(text)
        return EXIT_OK if right else EXIT_WRONG
