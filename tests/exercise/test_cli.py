"""emu exercise's command line: output, --json, --html, --count, check's exit status, and one
line with exit status 2 for every bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from html import escape

import pytest

from emu.cli import main
from emu.exercise import SEED_MAX, cli


@pytest.fixture(autouse=True)
def _built(apps):
    return apps


def test_one_exercise_printed(capsys):
    assert main(["exercise", "translate", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    e = cli.make("translate", 3)
    assert out == (f"== exercise translate, seed 3 ==\n{e.question}\n"
                   "(check: emu exercise check translate --seed 3 ANSWER)\n")
    assert e.answer not in out.split("Page-table entries")[0]


def test_same_seed_same_text_in_two_processes():
    run = [sys.executable, "-m", "emu", "exercise", "--seed", "0x10", "--count", "2", "--json"]
    first = subprocess.run(run, capture_output=True, text=True, timeout=120, check=True)
    second = subprocess.run(run, capture_output=True, text=True, timeout=120, check=True)
    assert first.stdout == second.stdout and first.stderr == second.stderr == ""
    got = json.loads(first.stdout)
    kinds = cli.KIND_NAMES
    assert [(e["kind"], e["seed"]) for e in got] == [(kinds[16 % 5], 16), (kinds[17 % 5], 17)]
    assert len(kinds) == 5


def test_json_schema(capsys):
    assert main(["exercise", "refuse", "--seed", "5", "--count", "3", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert [e["seed"] for e in got] == [5, 6, 7]
    for e in got:
        assert set(e) == {"kind", "seed", "question", "answer", "explanation", "facts"}
        assert e == cli.make("refuse", e["seed"]).as_json()


def test_no_kind_takes_the_kinds_in_turn(capsys):
    assert main(["exercise", "--seed", "4", "--count", "2"]) == 0
    out = capsys.readouterr().out
    assert "== exercise evict, seed 4 ==" in out and "== exercise translate, seed 5 ==" in out


def test_list(capsys):
    assert main(["exercise", "list"]) == 0
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines()] == ["translate", "refuse", "dpc",
                                                                 "bugcheck", "evict"]


@pytest.mark.parametrize("kind", ["translate", "refuse"])
def test_check_exit_status(kind, capsys):
    e = cli.make(kind, 11)
    assert main(["exercise", "check", kind, "--seed", "11", *e.answer.split()]) == 0
    out = capsys.readouterr().out
    assert out == f"right: {e.answer}\n{e.explanation}\n"
    wrong = "#GP" if kind == "translate" and e.answer != "#GP" else "PTE.RW=1 PTE.NX=0"
    assert main(["exercise", "check", kind, wrong, "--seed", "11"]) == 1
    out = capsys.readouterr().out
    assert out == f"wrong: you answered {wrong}; the machine says {e.answer}\n{e.explanation}\n"


def test_check_json(capsys):
    e = cli.make("translate", 2)
    assert main(["exercise", "check", "translate", "--seed", "2", "--json", e.answer]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got == {**e.as_json(), "given": e.answer, "right": True}


def test_html_sheet(tmp_path, capsys):
    sheet = tmp_path / "sheet.html"
    assert main(["exercise", "--seed", "20", "--count", "6", "--html", str(sheet)]) == 0
    assert capsys.readouterr().out == f"emu exercise: 6 exercises written to {sheet}\n"
    page = sheet.read_text(encoding="utf-8")
    answers_at = page.index("<h1>Answers</h1>")
    for seed in range(20, 26):
        e = cli.make(cli.KIND_NAMES[seed % len(cli.KIND_NAMES)], seed)
        assert page.index(escape(e.question)) < answers_at
        assert page.index(f"seed {seed}: <code>{escape(e.answer)}</code>") > answers_at
        assert escape(e.explanation) in page[answers_at:]
    assert not re.search(r"https?:|//[a-z]|<script|<link|<img|@import|url\(", page, re.I)


@pytest.mark.parametrize(("argv", "message"), [
    (["nosuch"], "unknown exercise kind 'nosuch' (the kinds: translate, refuse, dpc, bugcheck, "
                 "evict)"),
    (["check", "nosuch", "--seed", "1", "0x1"], "unknown exercise kind 'nosuch'"),
    (["translate", "--seed", str(SEED_MAX + 1)], "out of range (a seed is 0 to 4294967295)"),
    (["translate", "--seed", "-1"], "--seed -1: out of range"),
    (["translate", "--seed", "0x"], "--seed '0x': 0x with no hex digits after it"),
    (["translate", "--seed", "0x1ffffffffffffffff"], "wider than 64 bits"),
    (["translate", "--seed", "ten"], "--seed 'ten': not a number"),
    (["translate", "--seed", str(SEED_MAX), "--count", "2"], "the last seed, 4294967296"),
    (["translate", "--count", "0"], "--count 0: must be 1 to 1000"),
    (["translate", "--count", "1001"], "--count 1001: must be 1 to 1000"),
    (["translate", "refuse"], "one kind at a time"),
    (["check"], "check needs a kind and an answer"),
    (["check", "translate", "--seed", "1"], "check needs an answer after the kind"),
    (["check", "translate", "0x1000"], "check needs the exercise's seed: --seed S"),
    (["check", "translate", "--seed", "1", "--count", "2", "0x1"], "check takes one exercise"),
    (["list", "translate"], "`emu exercise list` takes nothing else"),
    (["translate", "--bogus"], "unrecognized arguments: --bogus"),
    (["translate", "--html", "/nonexistent-folder/x.html"], "--html"),
])
def test_bad_input_is_one_line_and_status_2(argv, message, capsys):
    assert main(["exercise", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("emu: error: ") and captured.err.count("\n") == 1
    assert message in captured.err


def test_help_names_the_seed_range(capsys):
    assert main(["exercise", "--help"]) == 0
    assert "2**32-1 = 4294967295" in capsys.readouterr().out


def test_one_exercise_sheet_says_so(tmp_path, capsys):
    sheet = tmp_path / "one.html"
    assert main(["exercise", "evict", "--html", str(sheet)]) == 0
    assert capsys.readouterr().out == f"emu exercise: 1 exercise written to {sheet}\n"
    assert escape(cli.make("evict", 0).question) in sheet.read_text(encoding="utf-8")


def test_answer_at_the_prompt(monkeypatch, capsys):
    e = cli.make("bugcheck", 9)
    typed = iter(["0x50 0x", e.answer])
    monkeypatch.setattr("builtins.input", lambda prompt: next(typed))
    assert cli._prompt(e) == 0
    out = capsys.readouterr().out
    assert out == ("not an answer: parameter 1 '0x': 0x with no hex digits after it\n"
                   f"right: {e.answer}\n{e.explanation}\n")


def test_html_with_json_prints_the_json(tmp_path, capsys):
    sheet = tmp_path / "both.html"
    assert main(["exercise", "dpc", "--seed", "3", "--html", str(sheet), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got == [cli.make("dpc", 3).as_json()]
    assert escape(got[0]["question"]) in sheet.read_text(encoding="utf-8")
